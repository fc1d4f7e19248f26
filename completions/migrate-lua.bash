# bash completion for migrate-lua.
# Commands and options are read from the installed binary's own help
# (`migrate-lua help`, `migrate-lua help COMMAND`), which is generated from
# cli.lua's tables, so this file never goes out of date. Results are cached
# per binary for the shell's lifetime.

_migrate_lua_lists() {
  local bin=$1
  [[ ${_migrate_lua_cached_bin-} == "$bin" ]] && return 0
  local help line section=
  help=$("$bin" help 2>/dev/null) || return 1
  _migrate_lua_commands=() _migrate_lua_options=() _migrate_lua_valued=()
  while IFS= read -r line; do
    case $line in
    commands:*) section=commands; continue ;;
    *options*:*) section=options; continue ;;
    "") [[ $section == commands ]] && section= ; continue ;;
    [a-z]*) section= ; continue ;;
    esac
    if [[ $section == commands && $line =~ ^\ \ ([a-z][a-z-]*)\ +[^\ ] ]]; then
      _migrate_lua_commands+=("${BASH_REMATCH[1]}")
    elif [[ $section == options && $line =~ ^\ \ (-[^\ ]+.*)$ ]]; then
      # "  -d, --database-url URL   text": names, then an upper-case metavar
      local sig=${BASH_REMATCH[1]%%  *} w
      local valued=
      for w in $sig; do
        w=${w%,}
        if [[ $w == -* ]]; then _migrate_lua_options+=("$w"); else valued=1; fi
      done
      if [[ -n $valued ]]; then
        for w in $sig; do w=${w%,}; [[ $w == -* ]] && _migrate_lua_valued+=("$w"); done
      fi
    fi
  done <<<"$help"
  _migrate_lua_cached_bin=$bin
}

_migrate_lua() {
  local cur prev words cword
  if declare -F _init_completion >/dev/null; then
    _init_completion -s || return
  else
    cur=${COMP_WORDS[COMP_CWORD]} prev=${COMP_WORDS[COMP_CWORD - 1]}
    words=("${COMP_WORDS[@]}") cword=$COMP_CWORD
  fi
  local bin=${words[0]}
  [[ $bin == */* ]] || bin=$(type -P "$bin") || return
  _migrate_lua_lists "$bin" || return

  # the value of an option that takes one
  local o
  for o in "${_migrate_lua_valued[@]}"; do
    if [[ $prev == "$o" ]]; then
      case $prev in
      --dir) COMPREPLY=($(compgen -d -- "$cur")) ;;
      --log-file | --metrics-file) COMPREPLY=($(compgen -f -- "$cur")) ;;
      --format) COMPREPLY=($(compgen -W "text github" -- "$cur")) ;;
      --status) COMPREPLY=($(compgen -W "started success failed rolled_back backup guard lint unsafe" -- "$cur")) ;;
      *) COMPREPLY=() ;;
      esac
      return 0
    fi
  done

  # the command: the first word that is neither an option nor its value
  local i command= after=()
  for ((i = 1; i < cword; i++)); do
    local w=${words[i]} skip=
    if [[ $w == -* ]]; then
      for o in "${_migrate_lua_valued[@]}"; do [[ $w == "$o" ]] && skip=1; done
      [[ -n $skip ]] && ((i++))
      continue
    fi
    if [[ -z $command ]]; then command=$w; else after+=("$w"); fi
  done

  if [[ $cur == -* ]]; then
    COMPREPLY=($(compgen -W "${_migrate_lua_options[*]}" -- "$cur"))
    return 0
  fi
  if [[ -z $command ]]; then
    COMPREPLY=($(compgen -W "${_migrate_lua_commands[*]}" -- "$cur"))
    return 0
  fi
  case $command in
  help) [[ ${#after[@]} -eq 0 ]] && COMPREPLY=($(compgen -W "${_migrate_lua_commands[*]}" -- "$cur")) ;;
  backup) [[ ${#after[@]} -eq 0 ]] && COMPREPLY=($(compgen -W "list restore drop prune" -- "$cur")) ;;
  *) COMPREPLY=() ;;
  esac
  return 0
}

complete -F _migrate_lua migrate-lua
