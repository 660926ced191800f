"""`edgefleet completion bash|zsh|fish`: a shell completion script made from the parser itself.

The parser is walked once into a table: for each command path (`edgefleet rollout create`) its
subcommands, the choices of its positionals, its options, which options take a value and the
choices of those that have some. The scripts carry that table and a small walk over the words
typed so far, so completing costs the shell nothing but a lookup (no Python start per tab).
zsh runs the bash script through its `bashcompinit`.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from dataclasses import dataclass, field
from typing import Any

from controller.cli.client import EXIT_OK

SHELLS = ("bash", "zsh", "fish")


@dataclass
class Node:
    """What can follow one command path."""

    path: str
    subcommands: list[str] = field(default_factory=list)
    words: list[str] = field(default_factory=list)  # positional choices
    options: list[str] = field(default_factory=list)
    takes_value: list[str] = field(default_factory=list)
    choices: dict[str, list[str]] = field(default_factory=dict)


def command_tree(parser: argparse.ArgumentParser, path: str = "edgefleet") -> list[Node]:
    """Every command path of `parser`, depth first."""
    node = Node(path)
    below: list[Node] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                node.subcommands.append(name)
                below.extend(command_tree(sub, f"{path} {name}"))
        elif action.option_strings:
            if action.nargs != 0:
                node.takes_value.extend(action.option_strings)
                if action.choices is not None:
                    for option in action.option_strings:
                        node.choices[option] = [str(c) for c in action.choices]
            if action.help != argparse.SUPPRESS:
                node.options.extend(action.option_strings)
        elif action.choices is not None:
            node.words.extend(str(c) for c in action.choices)
    return [node, *below]


def _q(text: str) -> str:
    return shlex.quote(text)


def bash_script(tree: list[Node]) -> str:
    spec = []
    choices = []
    for node in tree:
        spec.append(
            f"    {_q(node.path)}) _ef_subs={_q(' '.join(node.subcommands))}; "
            f"_ef_words={_q(' '.join(node.subcommands + node.words))}; "
            f"_ef_opts={_q(' '.join(node.options))}; "
            f"_ef_vals={_q(' ' + ' '.join(node.takes_value) + ' ')};;"
        )
        for option, values in node.choices.items():
            choices.append(
                f"    {_q(node.path + ' ' + option)}) _ef_choices={_q(' '.join(values))};;"
            )
    return "\n".join(
        [
            "# bash completion for edgefleet (made by `edgefleet completion bash`)",
            "_edgefleet_spec() {",
            '  case "$1" in',
            *spec,
            "    *) _ef_subs=''; _ef_words=''; _ef_opts=''; _ef_vals=' ';;",
            "  esac",
            "}",
            "_edgefleet_choices() {",
            '  case "$1" in',
            *choices,
            "    *) _ef_choices='';;",
            "  esac",
            "}",
            "_edgefleet() {",
            '  local cur="${COMP_WORDS[COMP_CWORD]}" path=edgefleet w i skip=0',
            "  local _ef_subs _ef_words _ef_opts _ef_vals _ef_choices",
            '  _edgefleet_spec "$path"',
            "  for ((i = 1; i < COMP_CWORD; i++)); do",
            '    w="${COMP_WORDS[i]}"',
            "    if ((skip)); then skip=0; continue; fi",
            '    case "$w" in',
            "      --*=*) continue ;;",
            '      -*) [[ "$_ef_vals" == *" $w "* ]] && skip=1; continue ;;',
            "    esac",
            '    if [[ " $_ef_subs " == *" $w "* ]]; then',
            '      path="$path $w"; _edgefleet_spec "$path"',
            "    fi",
            "  done",
            "  if ((skip)); then",
            '    _edgefleet_choices "$path ${COMP_WORDS[COMP_CWORD - 1]}"',
            '    if [[ -n "$_ef_choices" ]]; then',
            '      COMPREPLY=($(compgen -W "$_ef_choices" -- "$cur"))',
            "    else",
            '      COMPREPLY=($(compgen -f -- "$cur"))',
            "    fi",
            "    return 0",
            "  fi",
            '  if [[ "$cur" == -* ]]; then',
            '    COMPREPLY=($(compgen -W "$_ef_opts" -- "$cur"))',
            "    return 0",
            "  fi",
            '  COMPREPLY=($(compgen -W "$_ef_words" -- "$cur"))',
            '  if [[ -z "$_ef_words" ]]; then COMPREPLY+=($(compgen -f -- "$cur")); fi',
            "  return 0",
            "}",
            "complete -o filenames -F _edgefleet edgefleet",
            "",
        ]
    )


def zsh_script(tree: list[Node]) -> str:
    return "\n".join(
        [
            "#compdef edgefleet",
            "# zsh completion for edgefleet (made by `edgefleet completion zsh`): the bash",
            "# script, run by zsh's bashcompinit",
            "autoload -U +X bashcompinit && bashcompinit",
            bash_script(tree),
        ]
    )


def fish_script(tree: list[Node]) -> str:
    paths = " ".join(_q(node.path) for node in tree)
    vals = " ".join(_q(f"{node.path}|{o}") for node in tree for o in node.takes_value)
    lines = [
        "# fish completion for edgefleet (made by `edgefleet completion fish`)",
        f"set -g __edgefleet_paths {paths}",
        f"set -g __edgefleet_vals {vals}",
        "function __edgefleet_path",
        "    set -l words (commandline -opc)",
        "    set -l path edgefleet",
        "    set -l skip 0",
        "    for w in $words[2..-1]",
        "        if test $skip = 1",
        "            set skip 0",
        "            continue",
        "        end",
        "        if string match -q -- '-*' $w",
        '            if contains -- "$path|$w" $__edgefleet_vals',
        "                set skip 1",
        "            end",
        "            continue",
        "        end",
        '        if contains -- "$path $w" $__edgefleet_paths',
        '            set path "$path $w"',
        "        end",
        "    end",
        "    echo $path",
        "end",
        "function __edgefleet_at",
        '    test (__edgefleet_path) = "$argv[1]"',
        "end",
        "complete -c edgefleet -e",
    ]
    for node in tree:
        at = f"-n {_q('__edgefleet_at ' + _q(node.path))}"
        if node.subcommands or node.words:
            words = " ".join(node.subcommands + node.words)
            lines.append(f"complete -c edgefleet -f {at} -a {_q(words)}")
        for option in node.options:
            flag = f"-l {option[2:]}" if option.startswith("--") else f"-s {option[1:]}"
            if option in node.choices:
                values = " ".join(node.choices[option])
                lines.append(f"complete -c edgefleet {at} {flag} -x -a {_q(values)}")
            elif option in node.takes_value:
                lines.append(f"complete -c edgefleet {at} {flag} -r")
            else:
                lines.append(f"complete -c edgefleet {at} {flag}")
    return "\n".join([*lines, ""])


def cmd_completion(args: argparse.Namespace) -> int:
    # the whole command line's parser, handed down by main (which imports this module)
    tree = command_tree(args.root_parser)
    script = {"bash": bash_script, "zsh": zsh_script, "fish": fish_script}[args.shell](tree)
    sys.stdout.write(script)
    return EXIT_OK


def add_completion_parser(subparsers: Any) -> None:
    """`completion bash|zsh|fish`."""
    completion = subparsers.add_parser(
        "completion",
        help="print a shell completion script",
        description="Print a completion script for the shell. bash: "
        "`source <(edgefleet completion bash)` or save it as "
        "~/.local/share/bash-completion/completions/edgefleet; zsh: save it as _edgefleet "
        "in a folder of $fpath; fish: save it as ~/.config/fish/completions/edgefleet.fish.",
    )
    completion.add_argument("shell", choices=SHELLS)
    completion.set_defaults(func=cmd_completion)
