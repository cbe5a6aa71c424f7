package s3test_test

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/heapwatch/heapwatch/store/s3test"
)

func TestStopAndStartKeepData(t *testing.T) {
	srv := s3test.Start(t)
	ctx := context.Background()
	client := srv.Client()
	_, err := client.PutObject(ctx, &s3.PutObjectInput{
		Bucket: aws.String(srv.Bucket), Key: aws.String("a/b.json"), Body: strings.NewReader("{}"),
	})
	if err != nil {
		t.Fatalf("PutObject: %v", err)
	}

	srv.Stop()
	if resp, err := http.Get(srv.Endpoint + "/health"); err == nil {
		resp.Body.Close()
		t.Fatal("server still answers after Stop")
	}
	srv.Stop() // twice is fine

	endpoint := srv.Endpoint
	srv.Start()
	if srv.Endpoint != endpoint {
		t.Errorf("endpoint moved from %s to %s", endpoint, srv.Endpoint)
	}
	out, err := client.GetObject(ctx, &s3.GetObjectInput{Bucket: aws.String(srv.Bucket), Key: aws.String("a/b.json")})
	if err != nil {
		t.Fatalf("GetObject after restart: %v", err)
	}
	defer out.Body.Close()
	if b, _ := io.ReadAll(out.Body); string(b) != "{}" {
		t.Errorf("object after restart = %q", b)
	}
}

func TestURLAndEnv(t *testing.T) {
	srv := s3test.Start(t)
	url := srv.URL("p")
	for _, want := range []string{"s3://heapwatch/p?", "endpoint=http%3A%2F%2F127.0.0.1%3A", "path-style=true", "region=us-east-1"} {
		if !strings.Contains(url, want) {
			t.Errorf("URL %q lacks %q", url, want)
		}
	}
	env := strings.Join(srv.Env(), "\n")
	for _, want := range []string{"AWS_ACCESS_KEY_ID=" + srv.AccessKey, "AWS_SECRET_ACCESS_KEY=" + srv.SecretKey} {
		if !strings.Contains(env, want) {
			t.Errorf("Env lacks %q", want)
		}
	}
	// Two servers in one test do not share anything.
	other := s3test.Start(t)
	if other.Endpoint == srv.Endpoint || other.Dir == srv.Dir || other.SecretKey == srv.SecretKey {
		t.Error("two servers share an endpoint, directory or key")
	}
}
