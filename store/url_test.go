package store_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/heapwatch/heapwatch/store"
)

func TestValidateAcceptsGoodURLs(t *testing.T) {
	for rawURL, want := range map[string]string{
		"file:///var/lib/heapwatch":           "file:///var/lib/heapwatch",
		"file:///var/lib/heapwatch/../dumps/": "file:///var/lib/dumps",
		"file://localhost/tmp/x":              "file:///tmp/x",
		"s3://bucket":                         "s3://bucket/",
		"s3://my.bucket-1/a/b/":               "s3://my.bucket-1/a/b/",
		"s3://b-1/p?region=eu-west-3":         "s3://b-1/p/?region=eu-west-3",
		"s3://b-1/p?endpoint=http://127.0.0.1:9000&path-style=true&region=garage": "s3://b-1/p/?endpoint=http%3A%2F%2F127.0.0.1%3A9000&path-style=true&region=garage",
		"s3://b-1?sse=aws:kms&kms-key=arn:aws:kms:eu-west-1:111122223333:key/abc": "s3://b-1/?kms-key=arn%3Aaws%3Akms%3Aeu-west-1%3A111122223333%3Akey%2Fabc&sse=aws%3Akms",
		"s3://b-1?sse=aes256&path-style=false":                                    "s3://b-1/?sse=AES256",
	} {
		if err := store.Validate(rawURL); err != nil {
			t.Errorf("Validate(%q): %v", rawURL, err)
			continue
		}
		s, err := store.Open(context.Background(), rawURL)
		if err != nil {
			t.Errorf("Open(%q): %v", rawURL, err)
			continue
		}
		if got := s.String(); got != want {
			t.Errorf("Open(%q).String() = %q, want %q", rawURL, got, want)
		}
	}
}

func TestValidateRejectsBadURLs(t *testing.T) {
	for _, tc := range []struct{ url, want string }{
		{"", "empty"},
		{"/var/dumps", "did you mean file:///var/dumps"},
		{"dumps", "no scheme"},
		{"gs://bucket", `unknown scheme "gs"`},
		{"http://example.com", `unknown scheme "http"`},
		{"file:dumps", `relative path "dumps"`},
		{"file://dumps/x", `"dumps" is read as a host`},
		{"file://", "no directory"},
		{"file:///", "no directory"},
		{"file:///x?mode=1", `unknown parameter "mode"`},
		{"s3://", "missing bucket"},
		{"s3:///prefix", "missing bucket"},
		{"s3:bucket", "missing bucket"},
		{"s3://ab", "3 to 63 characters"},
		{"s3://My_Bucket", "lowercase letters"},
		{"s3://bucket-", "lowercase letters"},
		{"s3://a..b", "adjacent dots"},
		{"s3://192.168.1.10", "IP address"},
		{"s3://bucket:9000/x", "endpoint=http://host:port"},
		{"s3://key:secret@bucket/x", "credentials do not belong in the URL"},
		{"s3://bucket/a//b", "empty path segment"},
		{"s3://bucket/a/../b", `".." segment`},
		{"s3://bucket?regoin=us-east-1", `unknown parameter "regoin"`},
		{"s3://bucket?region=US East", `bad region "US East"`},
		{"s3://bucket?region=us_east_1", `bad region`},
		{"s3://bucket?region=", `bad region ""`},
		{"s3://bucket?region=a&region=b", `"region" given 2 times`},
		{"s3://bucket?endpoint=localhost:9000", "use http://host:port"},
		{"s3://bucket?endpoint=ftp://x", "use http://host:port"},
		{"s3://bucket?endpoint=http://", "no host"},
		{"s3://bucket?endpoint=http://u:p@h", "credentials do not belong"},
		{"s3://bucket?path-style=yes", `path-style="yes"`},
		{"s3://bucket?sse=kms", `sse="kms"`},
		{"s3://bucket?kms-key=abc", "kms-key needs sse=aws:kms"},
		{"s3://bucket?sse=AES256&kms-key=abc", "kms-key needs sse=aws:kms"},
		{"s3://bucket?sse=aws:kms&kms-key=", "kms-key is empty"},
		{"s3://bucket?x=%zz", "query"},
		{"s3://bucket#frag", "fragment"},
	} {
		err := store.Validate(tc.url)
		if !errors.Is(err, store.ErrBadURL) {
			t.Errorf("Validate(%q) = %v, want ErrBadURL", tc.url, err)
			continue
		}
		if !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Validate(%q) = %q, want it to mention %q", tc.url, err, tc.want)
		}
		if strings.Contains(err.Error(), "secret") {
			t.Errorf("Validate(%q) = %q leaks the password", tc.url, err)
		}
		if _, err := store.Open(context.Background(), tc.url); !errors.Is(err, store.ErrBadURL) {
			t.Errorf("Open(%q) = %v, want ErrBadURL", tc.url, err)
		}
	}
}
