package main

import (
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/heapwatch/heapwatch/capture"
	"github.com/heapwatch/heapwatch/capture/catalog"
)

// completionLimit bounds the capture IDs offered at once: the newest, as
// 'ls' shows them.
const completionLimit = 200

// profileNames are the profiles a capture holds, offered after the captures.
var profileNames = []string{"heap", "allocs", "goroutine"}

// completionCommand prints cobra's completion scripts. The scripts call
// 'heapwatch __complete', which completes commands, flags, capture IDs (from
// the catalog, with the --storage on the command line) and profile names.
func (a *app) completionCommand() *cobra.Command {
	return &cobra.Command{
		Use:       "completion bash|zsh|fish",
		Short:     "a shell completion script",
		Long:      "Prints a shell completion script:\n  source <(heapwatch completion bash)\n  heapwatch completion zsh > \"${fpath[1]}/_heapwatch\"\n  heapwatch completion fish > ~/.config/fish/completions/heapwatch.fish",
		ValidArgs: []string{"bash", "zsh", "fish"},
		Args:      argCount(1, 1),
		RunE: func(cmd *cobra.Command, args []string) error {
			root := cmd.Root()
			switch args[0] {
			case "bash":
				return root.GenBashCompletionV2(a.stdout, true)
			case "zsh":
				return root.GenZshCompletion(a.stdout)
			case "fish":
				return root.GenFishCompletion(a.stdout, true)
			}
			return fmt.Errorf("%w: completion for %q: use bash, zsh or fish", errUsage, args[0])
		},
	}
}

// completeCaptures completes the first n arguments with capture IDs and
// the next one with a profile name.
func (a *app) completeCaptures(n int) cobra.CompletionFunc {
	return func(cmd *cobra.Command, args []string, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective) {
		switch {
		case len(args) == n:
			return profileNames, cobra.ShellCompDirectiveNoFileComp
		case len(args) > n:
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		ids, err := a.captureIDs(cmd, toComplete)
		if err != nil {
			cobra.CompDebugln(err.Error(), true)
			return nil, cobra.ShellCompDirectiveError
		}
		return ids, cobra.ShellCompDirectiveNoFileComp
	}
}

// captureIDs lists the newest capture IDs starting with prefix, reading only
// the part of the storage its complete namespace/pod/container segments name.
func (a *app) captureIDs(cmd *cobra.Command, prefix string) ([]string, error) {
	st, err := a.openStore(cmd.Context())
	if err != nil {
		return nil, err
	}
	parts := strings.Split(prefix, "/")
	parts = append(parts[:len(parts)-1], "", "", "") // the last segment is still being typed
	entries, err := catalog.Scan(cmd.Context(), st, capture.Prefix(parts[0], parts[1], parts[2]), func(capture.Name) bool { return true })
	if err != nil {
		return nil, err
	}
	var ids []string
	for _, e := range entries {
		if strings.HasPrefix(e.ID, prefix) {
			ids = append(ids, e.ID)
		}
		if len(ids) == completionLimit {
			break
		}
	}
	return ids, nil
}
