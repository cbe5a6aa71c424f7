// Command heapwatch lists the heap profiles the heapwatch sidecar captured
// and opens them with pprof. Installed as kubectl-heapwatch it is also the
// kubectl plugin 'kubectl heapwatch'.
//
//	heapwatch [--storage URL] [--output table|json] <command> [flags] [args]
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/heapwatch/heapwatch/settings"
	"github.com/heapwatch/heapwatch/store"
)

// version is set by the linker (-X main.version=...).
var version = "dev"

// envStorage names the storage URL variable, shared with the sidecar.
var envStorage = settings.Storage.EnvVar()

// defaultStorageDir is where `make demo` stores captures, relative to the
// working directory, so `heapwatch ls` works after it without flags.
const defaultStorageDir = "heapwatch-dumps"

// rootLong is the top of 'heapwatch help'; cobra adds the commands and flags.
const rootLong = `heapwatch lists and opens the heap profiles captured by the heapwatch sidecar.

<capture> is an ID printed by ls (namespace/pod/container/<time>-<trigger>, or
_node/<node>/<daemon>/<time>-<trigger> for a host daemon) or any prefix of
exactly one ID.

Storage (--storage, or $HEAPWATCH_STORAGE; default file://$PWD/heapwatch-dumps):
  file:///absolute/dir
  s3://bucket/prefix?region=R&endpoint=URL&path-style=true&sse=aws:kms&kms-key=K
S3 credentials come from the AWS default chain (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY,
AWS_PROFILE, IRSA, EKS Pod Identity, instance metadata).`

// exitUsage is the exit code for a command line that cannot be run.
const exitUsage = 2

// errUsage marks an error in the command line; the message is enough.
var errUsage = errors.New("usage")

// pluginName is how kubectl runs the CLI as a plugin (kubectl-heapwatch on
// PATH); help then names the command the user typed.
const pluginName = "kubectl heapwatch"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	a := newApp(os.Stdout, os.Stderr)
	a.name = displayName(os.Args[0])
	code := a.run(ctx, os.Args[1:])
	stop()
	os.Exit(code)
}

// displayName is the command name help shows for this argv[0].
func displayName(argv0 string) string {
	if strings.HasPrefix(filepath.Base(argv0), "kubectl-") {
		return pluginName
	}
	return "heapwatch"
}

// app is one invocation: its global options and where output goes.
type app struct {
	name    string // as shown in help: heapwatch or kubectl heapwatch
	storage string
	output  string
	stdout  io.Writer
	stderr  io.Writer
	now     func() time.Time
	// open opens the storage; tests wrap it to watch what is listed.
	open func(ctx context.Context, rawURL string) (store.Store, error)
}

func newApp(stdout, stderr io.Writer) *app {
	return &app{name: "heapwatch", stdout: stdout, stderr: stderr, now: time.Now, open: store.Open}
}

// run executes one command line and returns the process exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	return newApp(stdout, stderr).run(ctx, args)
}

func (a *app) run(ctx context.Context, args []string) int {
	root := a.rootCommand()
	root.SetArgs(args)
	err := root.ExecuteContext(ctx)
	switch {
	case err == nil:
		return 0
	case errors.Is(err, errUsage):
		fmt.Fprintf(a.stderr, "heapwatch: %v\nRun '%s help' for usage.\n", err, a.name)
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

// rootCommand is the command tree of one invocation. The global flags are
// persistent, so they work before or after the command.
func (a *app) rootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:           "heapwatch",
		Short:         "lists and opens the heap profiles captured by the heapwatch sidecar",
		Long:          rootLong,
		Annotations:   map[string]string{cobra.CommandDisplayNameAnnotation: a.name},
		SilenceErrors: true,
		SilenceUsage:  true,
		Args: func(_ *cobra.Command, args []string) error {
			if len(args) > 0 {
				return fmt.Errorf("%w: unknown command %q", errUsage, args[0])
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, _ []string) error {
			fmt.Fprint(a.stderr, cmd.UsageString())
			return fmt.Errorf("%w: no command", errUsage)
		},
		PersistentPreRunE: func(*cobra.Command, []string) error {
			if !slices.Contains([]string{"", "table", "json"}, a.output) {
				return fmt.Errorf("%w: --output %q: use table or json", errUsage, a.output)
			}
			return nil
		},
	}
	root.SetOut(a.stdout)
	root.SetErr(a.stderr)
	// A flag the command does not know: the error and the command's usage,
	// as the flag package printed them, and exit 2.
	root.SetFlagErrorFunc(func(cmd *cobra.Command, err error) error {
		fmt.Fprint(a.stderr, cmd.UsageString())
		return fmt.Errorf("%w: %w", errUsage, err)
	})
	root.CompletionOptions.DisableDefaultCmd = true // ours takes bash, zsh and fish, with exit 2 for others
	pf := root.PersistentFlags()
	pf.StringVar(&a.storage, "storage", "", "storage URL (default $"+envStorage+", else file://$PWD/"+defaultStorageDir+")")
	pf.StringVar(&a.output, "output", "", "output format: table or json")
	_ = root.RegisterFlagCompletionFunc("output", cobra.FixedCompletions([]string{"table", "json"}, cobra.ShellCompDirectiveNoFileComp))
	_ = root.RegisterFlagCompletionFunc("storage", cobra.NoFileCompletions)
	for _, c := range pprofCommands {
		root.AddCommand(a.pprofCommand(c.name, c.use, c.short, c.long, c.captures))
	}
	root.AddCommand(a.lsCommand(), a.getCommand(), a.explainCommand(), a.completionCommand(), &cobra.Command{
		Use:   "version",
		Short: "print the version",
		Args:  argCount(0, 0),
		Run:   func(*cobra.Command, []string) { fmt.Fprintln(a.stdout, "heapwatch", version) },
	})
	return root
}

// argCount checks the number of positional arguments, as a usage error.
func argCount(lo, hi int) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) >= lo && len(args) <= hi {
			return nil
		}
		var want string
		switch {
		case lo == hi:
			want = fmt.Sprintf("%d argument(s)", lo)
		default:
			want = fmt.Sprintf("%d to %d arguments", lo, hi)
		}
		return fmt.Errorf("%w: %s takes %s, got %d", errUsage, cmd.Name(), want, len(args))
	}
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
