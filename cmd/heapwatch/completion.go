package main

import (
	"fmt"
)

// Completion scripts complete commands and flags, and capture IDs by asking
// 'heapwatch ls -q' (with the --storage given on the command line, if any).
const (
	bashCompletion = `# heapwatch bash completion: source <(heapwatch completion bash)
_heapwatch() {
  local cur prev cmd storage i
  cur="${COMP_WORDS[COMP_CWORD]}"
  prev="${COMP_WORDS[COMP_CWORD-1]}"
  for ((i = 1; i < COMP_CWORD; i++)); do
    case "${COMP_WORDS[i]}" in
      --storage|-storage) storage="--storage=${COMP_WORDS[i+1]}"; ((i++)) ;;
      --storage=*|-storage=*) storage="${COMP_WORDS[i]}" ;;
      -*) ;;
      *) [[ -z "$cmd" ]] && cmd="${COMP_WORDS[i]}" ;;
    esac
  done
  case "$prev" in
    --storage|--namespace|--pod|--container|--since|--limit|--http|--sample-index|--nodes|-o|-n|-c) return ;;
    --output) COMPREPLY=($(compgen -W "table json" -- "$cur")); return ;;
  esac
  if [[ -z "$cmd" ]]; then
    COMPREPLY=($(compgen -W "ls get top open diff explain completion version help --storage --output" -- "$cur"))
    return
  fi
  case "$cmd" in
    ls) COMPREPLY=($(compgen -W "--namespace --pod --container --since --limit -q --output --storage" -- "$cur")) ;;
    get) COMPREPLY=($(compgen -W "-o --output --storage $(heapwatch $storage ls -q --limit 200 2>/dev/null)" -- "$cur")) ;;
    top|open|diff) COMPREPLY=($(compgen -W "heap allocs goroutine --native --http --no-browser --sample-index --nodes -o --storage $(heapwatch $storage ls -q --limit 200 2>/dev/null)" -- "$cur")) ;;
    explain) COMPREPLY=($(compgen -W "--plot --nodes -o --output --storage $(heapwatch $storage ls -q --limit 200 2>/dev/null)" -- "$cur")) ;;
    completion) COMPREPLY=($(compgen -W "bash zsh fish" -- "$cur")) ;;
  esac
}
complete -o default -F _heapwatch heapwatch
`
	zshCompletion = `#compdef heapwatch
# heapwatch zsh completion: heapwatch completion zsh > "${fpath[1]}/_heapwatch"
_heapwatch() {
  local -a commands captures
  commands=(
    'ls:list captures, newest first'
    'get:download a capture'
    'top:top functions of a profile'
    'open:pprof web UI on a profile'
    'diff:what grew between two captures'
    'explain:the last OOM kill in one screen'
    'completion:shell completion script'
    'version:print the version'
  )
  if (( CURRENT == 2 )); then
    _describe 'command' commands
    return
  fi
  case "$words[2]" in
    ls) _arguments '--namespace[namespace]:namespace:' '--pod[pod]:pod:' '--container[container]:container:' \
          '--since[newer than]:duration:' '--limit[at most]:number:' '-q[IDs only]' '--output[format]:format:(table json)' ;;
    get|top|open|diff|explain)
      captures=(${(f)"$(heapwatch ls -q --limit 200 2>/dev/null)"})
      _alternative 'captures:capture:compadd -a captures' 'profiles:profile:(heap allocs goroutine)' ;;
    completion) _values 'shell' bash zsh fish ;;
  esac
}
compdef _heapwatch heapwatch
`
	fishCompletion = `# heapwatch fish completion: heapwatch completion fish > ~/.config/fish/completions/heapwatch.fish
set -l cmds ls get top open diff explain completion version help
complete -c heapwatch -f
complete -c heapwatch -n "not __fish_seen_subcommand_from $cmds" -a "$cmds"
complete -c heapwatch -l storage -r -d 'storage URL'
complete -c heapwatch -l output -x -a 'table json' -d 'output format'
complete -c heapwatch -n '__fish_seen_subcommand_from ls' -l namespace -x -d namespace
complete -c heapwatch -n '__fish_seen_subcommand_from ls' -l pod -x -d pod
complete -c heapwatch -n '__fish_seen_subcommand_from ls' -l container -x -d container
complete -c heapwatch -n '__fish_seen_subcommand_from ls' -l since -x -d 'newer than (2h, 7d)'
complete -c heapwatch -n '__fish_seen_subcommand_from ls' -l limit -x -d 'at most N'
complete -c heapwatch -n '__fish_seen_subcommand_from get top open diff explain' -a '(heapwatch ls -q --limit 200 2>/dev/null)'
complete -c heapwatch -n '__fish_seen_subcommand_from top open diff' -a 'heap allocs goroutine'
complete -c heapwatch -n '__fish_seen_subcommand_from top diff' -l native -d 'built-in report'
complete -c heapwatch -n '__fish_seen_subcommand_from open diff' -l http -x -d 'web UI address'
complete -c heapwatch -n '__fish_seen_subcommand_from completion' -a 'bash zsh fish'
`
)

func (a *app) completion(args []string) error {
	fs := a.flagSet("completion", "Usage: heapwatch completion bash|zsh|fish\n")
	pos, err := a.parse(fs, args, 1, 1)
	if err != nil {
		return err
	}
	scripts := map[string]string{"bash": bashCompletion, "zsh": zshCompletion, "fish": fishCompletion}
	s, ok := scripts[pos[0]]
	if !ok {
		return fmt.Errorf("%w: completion for %q: use bash, zsh or fish", errUsage, pos[0])
	}
	fmt.Fprint(a.stdout, s)
	return nil
}
