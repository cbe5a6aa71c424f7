// Command heapwatch lists the heap profiles the heapwatch sidecar captured
// and opens them with pprof.
//
//	heapwatch [--storage URL] [--output table|json] <command> [flags] [args]
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/heapwatch/heapwatch/sidecar/store"
)

// version is set by the linker (-X main.version=...).
var version = "dev"

// envStorage names the storage URL variable, shared with the sidecar.
const envStorage = "HEAPWATCH_STORAGE"

// defaultStorageDir is where `make demo` stores captures, relative to the
// working directory, so `heapwatch ls` works after it without flags.
const defaultStorageDir = "heapwatch-dumps"

const usage = `heapwatch lists and opens the heap profiles captured by the heapwatch sidecar.

Usage:
  heapwatch [--storage URL] [--output table|json] <command> [flags] [args]

Commands:
  ls [--namespace N] [--pod P] [--container C] [--since 2h] [--limit N] [-q]
                             captures, newest first
  get <capture> [-o dir]     download a capture's profiles and metadata
  top <capture> [profile]    the top functions of a profile (default heap, in-use bytes)
  open <capture> [profile]   the pprof web UI on a profile
  diff <older> <newer> [profile]
                             what grew between two captures (pprof -diff_base)
  explain <namespace>/<pod>[/<container>] | <capture> [--plot FILE.svg]
                             the last OOM kill in one screen: timeline, verdict, what grew
  completion bash|zsh|fish   a shell completion script
  version                    print the version

<capture> is an ID printed by ls (namespace/pod/container/<time>-<trigger>) or
any prefix of exactly one ID.

Storage (--storage, or $HEAPWATCH_STORAGE; default file://$PWD/heapwatch-dumps):
  file:///absolute/dir
  s3://bucket/prefix?region=R&endpoint=URL&path-style=true&sse=aws:kms&kms-key=K
S3 credentials come from the AWS default chain (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY,
AWS_PROFILE, IRSA, EKS Pod Identity, instance metadata).

Run 'heapwatch <command> -h' for a command's flags.
`

// exitUsage is the exit code for a command line that cannot be run.
const exitUsage = 2

var (
	// errUsage marks an error in the command line; the message is enough.
	errUsage = errors.New("usage")
	// errFlag marks a flag error the flag package has already reported.
	errFlag = errors.New("bad flag")
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// app is one invocation: its global options and where output goes.
type app struct {
	storage string
	output  string
	stdout  io.Writer
	stderr  io.Writer
	now     func() time.Time
	// open opens the storage; tests wrap it to watch what is listed.
	open func(ctx context.Context, rawURL string) (store.Store, error)
}

// run executes one command line and returns the process exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	a := &app{stdout: stdout, stderr: stderr, now: time.Now, open: store.Open}
	return a.run(ctx, args)
}

func (a *app) run(ctx context.Context, args []string) int {
	err := a.dispatch(ctx, args)
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.Is(err, errFlag):
		return exitUsage
	case errors.Is(err, errUsage):
		fmt.Fprintf(a.stderr, "heapwatch: %v\nRun 'heapwatch help' for usage.\n", err)
		return exitUsage
	}
	fmt.Fprintf(a.stderr, "heapwatch: %v\n", err)
	if hint := hintFor(err); hint != "" {
		fmt.Fprintln(a.stderr, hint)
	}
	return 1
}

// hintFor says what to do about the errors people hit first.
func hintFor(err error) string {
	switch {
	case errors.Is(err, store.ErrBadURL):
		return "Set --storage or $" + envStorage + " to file:///absolute/dir or s3://bucket/prefix?region=...; see 'heapwatch help'."
	case errors.Is(err, store.ErrCredentials):
		return `The storage refused the credentials or none were found. heapwatch uses the AWS default chain, in order:
  - AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (plus AWS_SESSION_TOKEN for temporary keys)
  - AWS_PROFILE from ~/.aws/config and ~/.aws/credentials (run 'aws sso login' for SSO profiles)
  - IRSA in a pod: AWS_ROLE_ARN and AWS_WEB_IDENTITY_TOKEN_FILE, from the service account annotation
  - EKS Pod Identity or the instance role (IMDS)
Check that the key exists, the secret matches, and the policy allows s3:ListBucket and s3:GetObject
on the bucket (s3:PutObject for the sidecar).`
	}
	return ""
}

func (a *app) dispatch(ctx context.Context, args []string) error {
	fs := a.flagSet("heapwatch", usage)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	args = fs.Args()
	if len(args) == 0 {
		fmt.Fprint(a.stderr, usage)
		return fmt.Errorf("%w: no command", errUsage)
	}
	cmd, args := args[0], args[1:]
	switch cmd {
	case "ls", "list":
		return a.ls(ctx, args)
	case "get":
		return a.get(ctx, args)
	case "top":
		return a.top(ctx, args)
	case "open":
		return a.openUI(ctx, args)
	case "diff":
		return a.diff(ctx, args)
	case "explain":
		return a.explain(ctx, args)
	case "completion":
		return a.completion(args)
	case "version":
		fmt.Fprintln(a.stdout, "heapwatch", version)
		return nil
	case "help", "-h", "--help":
		fmt.Fprint(a.stdout, usage)
		return nil
	}
	return fmt.Errorf("%w: unknown command %q", errUsage, cmd)
}

// flagSet is a FlagSet that also takes the global flags, so they work before
// or after the command.
func (a *app) flagSet(name, help string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(a.stderr)
	fs.Usage = func() {
		fmt.Fprint(a.stderr, help)
		fmt.Fprintln(a.stderr, "\nFlags:")
		fs.PrintDefaults()
	}
	fs.StringVar(&a.storage, "storage", a.storage, "storage URL (default $"+envStorage+", else file://$PWD/"+defaultStorageDir+")")
	fs.StringVar(&a.output, "output", a.output, "output format: table or json")
	return fs
}

// parse parses flags placed anywhere among the arguments (Go's flag package
// stops at the first argument) and checks the number of arguments.
func (a *app) parse(fs *flag.FlagSet, args []string, minArgs, maxArgs int) ([]string, error) {
	var pos []string
	for {
		if err := parseFlags(fs, args); err != nil {
			return nil, err
		}
		args = fs.Args()
		if len(args) == 0 {
			break
		}
		pos, args = append(pos, args[0]), args[1:]
	}
	if len(pos) < minArgs || len(pos) > maxArgs {
		return nil, fmt.Errorf("%w: %s takes %s, got %d", errUsage, fs.Name(), argCount(minArgs, maxArgs), len(pos))
	}
	if !slices.Contains([]string{"", "table", "json"}, a.output) {
		return nil, fmt.Errorf("%w: --output %q: use table or json", errUsage, a.output)
	}
	return pos, nil
}

func parseFlags(fs *flag.FlagSet, args []string) error {
	err := fs.Parse(args)
	if err != nil && !errors.Is(err, flag.ErrHelp) {
		return fmt.Errorf("%w: %w", errFlag, err)
	}
	return err
}

func argCount(lo, hi int) string {
	switch {
	case lo == hi:
		return fmt.Sprintf("%d argument(s)", lo)
	case hi > 100:
		return fmt.Sprintf("at least %d argument(s)", lo)
	}
	return fmt.Sprintf("%d to %d arguments", lo, hi)
}

// openStore opens the storage from --storage, $HEAPWATCH_STORAGE or the
// demo's directory.
func (a *app) openStore(ctx context.Context) (store.Store, error) {
	rawURL := a.storage
	if rawURL == "" {
		rawURL = os.Getenv(envStorage)
	}
	if rawURL == "" {
		wd, err := os.Getwd()
		if err != nil {
			return nil, fmt.Errorf("no --storage given and no working directory: %w", err)
		}
		rawURL = "file://" + filepath.Join(wd, defaultStorageDir)
	}
	return a.open(ctx, rawURL)
}

func (a *app) jsonOutput() bool { return strings.EqualFold(a.output, "json") }
