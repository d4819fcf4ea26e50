"""Conversation trees (OpenAssistant's export format) flattened into conversations or preference pairs.

An OASST tree is a prompter message whose ``replies`` are assistant messages, whose replies are prompter
messages, and so on. Volunteers ranked sibling replies (``rank`` 0 is the best), and moderators marked
messages ``deleted`` or failed their review (``review_result`` false). Three ways to read a tree:

- ``best``: one conversation, the best-ranked reply at every level (the usual SFT reading of OASST);
- ``all``: every root-to-leaf branch, one conversation each (branches share their first turns);
- ``pairs``: one preference pair per ranked assistant reply below the best: the conversation up to the
  prompter message, the rank-0 reply chosen, the lower-ranked sibling rejected.

A conversation ends on an assistant message: a trailing prompter message with no usable reply is dropped.
Deleted messages and messages that failed review are skipped with everything below them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

TREE_MODES = ("best", "all", "pairs")


def tree_root(record: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The root message of an OASST record: ``prompt`` of a tree export (``message_tree_id`` + ``prompt``), or the
    record itself when it is a root message with nested ``replies`` (the message export); None otherwise."""
    prompt = record.get("prompt")
    if "message_tree_id" in record and isinstance(prompt, Mapping):
        return prompt
    if "message_id" in record and "replies" in record and "text" in record:
        return record
    return None


def usable(message: Any) -> bool:
    """Whether a message may enter a conversation: an object with text, not deleted, not failed in review."""
    return (
        isinstance(message, Mapping)
        and isinstance(message.get("text"), str)
        and not message.get("deleted")
        and message.get("review_result") is not False
    )


def ranked_replies(message: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The usable replies of ``message``, best first: by ``rank`` (unranked replies last), ties in input order."""
    replies = [r for r in message.get("replies") or [] if usable(r)]
    return sorted(replies, key=lambda r: (r.get("rank") is None, r.get("rank") if isinstance(r.get("rank"), (int, float)) else 0))


def _trim(path: list[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """``path`` without trailing prompter messages (a conversation ends on an answer)."""
    while path and path[-1].get("role") != "assistant":
        path = path[:-1]
    return path


def best_branch(root: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The messages of the best-ranked branch from ``root`` down, ending on an assistant message (only the root
    when nothing below it is usable)."""
    path = [root]
    node = root
    while True:
        replies = ranked_replies(node)
        if not replies:
            break
        node = replies[0]
        path.append(node)
    return _trim(path) or [root]


def all_branches(root: Mapping[str, Any]) -> list[list[Mapping[str, Any]]]:
    """Every root-to-leaf branch, each ending on an assistant message, in depth-first order of ranks; branches
    that trim to the same messages are listed once."""
    out: list[list[Mapping[str, Any]]] = []
    seen: set[tuple[int, ...]] = set()
    stack: list[list[Mapping[str, Any]]] = [[root]]
    while stack:
        path = stack.pop()
        replies = ranked_replies(path[-1])
        if replies:
            stack.extend(path + [r] for r in reversed(replies))
            continue
        trimmed = _trim(path)
        key = tuple(id(m) for m in trimmed)
        if trimmed and key not in seen:
            seen.add(key)
            out.append(trimmed)
    return out or [[root]]


def ranked_pairs(root: Mapping[str, Any]) -> list[tuple[list[Mapping[str, Any]], Mapping[str, Any], Mapping[str, Any]]]:
    """(prompt messages, chosen reply, rejected reply) for every prompter message with two or more ranked assistant
    replies: the rank-0 reply against each lower-ranked one. The prompt is the path from the root to the
    prompter message (through the replies that lead there)."""
    out = []
    stack: list[list[Mapping[str, Any]]] = [[root]]
    while stack:
        path = stack.pop()
        node = path[-1]
        replies = ranked_replies(node)
        if node.get("role") == "prompter":
            ranked = [r for r in replies if isinstance(r.get("rank"), (int, float))]
            out += [(path, ranked[0], worse) for worse in ranked[1:]]
        stack.extend(path + [r] for r in reversed(replies))
    return out
