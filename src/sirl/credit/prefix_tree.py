"""The group's prefix tree: every row of a step that answers one prompt, as a trie over its token ids.

A node is a token prefix of the responses of one group (the root: the empty prefix). Each node keeps how
many rows pass through it and how they ended, so every value the credit needs is one lookup:

- ``visits[n]``: rows through node n (free or given);
- ``free[n]``, ``free_successes[n]``, ``free_reward[n]``: the rows that were *free* at n, i.e. sampled
  from n or from an earlier node (a row given a prefix of L tokens is free at depth >= L; a probe from a
  longer prefix passes through a shorter one too, but was forced on the way and would bias the estimate);
  the node's value V(n) is their success rate (``value``) or mean reward (``mean_reward``);
- ``sampled[n]``: rows that sampled the token leading into n (free at its parent), lambda-GRPO's count;
- ``successes[n]``: successes through n, free or given. ``certified(n)``: one passes, so V(n) > 0.

Rows are added in order and never removed; sums run in row order, so the same rows give the same floats.
Naive twins (:func:`naive_value`, :func:`naive_certified`) scan the rows prefix by prefix; tests hold
them equal.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence


class PrefixTree:
    """Rows of any number of groups, one root per group (rows of different groups never share a node).

    ``success_threshold``: a row whose reward is at least this counts as a success (verified)."""

    def __init__(self, success_threshold: float = 1.0):
        self.success_threshold = success_threshold
        self.children: list[dict[int, int]] = []  # node -> {token: child node}
        self.depth: list[int] = []
        self.visits: list[int] = []
        self.free: list[int] = []
        self.free_successes: list[int] = []
        self.free_reward: list[float] = []
        self.sampled: list[int] = []
        self.successes: list[int] = []
        self.roots: dict[int, int] = {}  # group id -> its root node
        self.paths: list[list[int]] = []  # per row, its nodes from the root (depth 0) to its last token
        self.rewards: list[float] = []
        self.groups: list[int] = []
        self.prefix_lens: list[int] = []

    @classmethod
    def build(
        cls, responses: Sequence[Sequence[int]], rewards: Sequence[float], groups: Sequence[int],
        prefix_lens: Sequence[int] | None = None, success_threshold: float = 1.0,
    ) -> PrefixTree:
        tree = cls(success_threshold)
        tree.add_rows(responses, rewards, groups, prefix_lens)
        return tree

    def _new_node(self, depth: int) -> int:
        self.children.append({})
        self.depth.append(depth)
        for counts in (self.visits, self.free, self.free_successes, self.sampled, self.successes):
            counts.append(0)
        self.free_reward.append(0.0)
        return len(self.children) - 1

    def add_rows(
        self, responses: Sequence[Sequence[int]], rewards: Sequence[float], groups: Sequence[int], prefix_lens: Sequence[int] | None = None,
    ) -> list[int]:
        """Add rows in order; returns their row indices."""
        if not len(responses) == len(rewards) == len(groups):
            raise ValueError(f"responses ({len(responses)}), rewards ({len(rewards)}) and groups ({len(groups)}) must have one entry per row")
        prefix_lens = [0] * len(responses) if prefix_lens is None else prefix_lens
        if len(prefix_lens) != len(responses):
            raise ValueError(f"prefix_lens has {len(prefix_lens)} entries for {len(responses)} rows")
        return [self.add(tokens, reward, group, given) for tokens, reward, group, given in zip(responses, rewards, groups, prefix_lens)]

    def add(self, tokens: Sequence[int], reward: float, group: int, prefix_len: int = 0) -> int:
        """Add one row: its response ``tokens``, of which the first ``prefix_len`` were given; returns its index."""
        if not 0 <= prefix_len <= len(tokens):
            raise ValueError(f"prefix_len {prefix_len} outside the response's {len(tokens)} tokens")
        if group not in self.roots:
            self.roots[group] = self._new_node(0)
        path = [self.roots[group]]
        for token in tokens:
            nxt = self.children[path[-1]].get(token)
            if nxt is None:
                nxt = self.children[path[-1]][token] = self._new_node(len(path))
            path.append(nxt)
        success = reward >= self.success_threshold
        for depth, node in enumerate(path):
            self.visits[node] += 1
            self.successes[node] += success
            if depth >= prefix_len:
                self.free[node] += 1
                self.free_successes[node] += success
                self.free_reward[node] += reward
            if depth > prefix_len:
                self.sampled[node] += 1
        self.paths.append(path)
        self.rewards.append(reward)
        self.groups.append(group)
        self.prefix_lens.append(prefix_len)
        return len(self.paths) - 1

    def __len__(self) -> int:
        return len(self.paths)

    def is_success(self, row: int) -> bool:
        return self.rewards[row] >= self.success_threshold

    def node(self, group: int, prefix: Sequence[int]) -> int | None:
        """The node of ``prefix`` in ``group``'s tree, or None when no row of the group wrote it."""
        node = self.roots.get(group)
        for token in prefix:
            if node is None:
                return None
            node = self.children[node].get(token)
        return node

    def certified(self, node: int | None) -> bool:
        """A success passes through the node (so its value is > 0)."""
        return node is not None and self.successes[node] > 0

    def value(self, node: int | None) -> tuple[float, int]:
        """(success rate, number) of the rows free at the node; (0, 0) when none (or no such node)."""
        if node is None or self.free[node] == 0:
            return 0.0, 0
        return self.free_successes[node] / self.free[node], self.free[node]

    def value_without(self, node: int | None, rows: Iterable[int]) -> tuple[float, int]:
        """:meth:`value` without the given rows (each counted once, where it is free at the node)."""
        if node is None:
            return 0.0, 0
        n, wins = self.free[node], self.free_successes[node]
        for row in set(rows):
            if self.passes_free(row, node):
                n -= 1
                wins -= self.is_success(row)
        return (wins / n, n) if n else (0.0, 0)

    def passes_free(self, row: int, node: int) -> bool:
        """Row ``row`` passes through ``node`` and was free there."""
        depth = self.depth[node]
        path = self.paths[row]
        return depth < len(path) and path[depth] == node and self.prefix_lens[row] <= depth

    def mean_reward(self, node: int) -> float:
        """Mean reward of the rows free at the node (0 when none): tree credit's node value."""
        return self.free_reward[node] / self.free[node] if self.free[node] else 0.0

    def free_besides(self, node: int | None, row: int) -> int:
        """Rows free at the node other than ``row``."""
        if node is None:
            return 0
        return self.free[node] - self.passes_free(row, node)

    def shared_with_success(self, row: int) -> int:
        """The length of the longest token prefix ``row`` shares with a success of its group other than
        itself: the first token where it left every success (0 when its group has none)."""
        own = self.is_success(row)
        best = 0
        for depth, node in enumerate(self.paths[row]):
            if self.successes[node] - own > 0:
                best = depth
            else:
                break  # a node no other success passes has no such descendant either
        return best


# --- naive twins: the definitions, scanning every row of the group ---------------------------------


def _through(responses, groups, group: int, prefix: Sequence[int]) -> list[int]:
    n = len(prefix)
    return [i for i, (tokens, g) in enumerate(zip(responses, groups)) if g == group and len(tokens) >= n and list(tokens[:n]) == list(prefix)]


def naive_value(
    responses: Sequence[Sequence[int]], rewards: Sequence[float], groups: Sequence[int], prefix_lens: Sequence[int],
    group: int, prefix: Sequence[int], leave_out: Iterable[int] = (), success_threshold: float = 1.0,
) -> tuple[float, int]:
    """The twin of :meth:`PrefixTree.value` and :meth:`PrefixTree.value_without`."""
    excluded = set(leave_out)
    free = [i for i in _through(responses, groups, group, prefix) if prefix_lens[i] <= len(prefix) and i not in excluded]
    if not free:
        return 0.0, 0
    return sum(rewards[i] >= success_threshold for i in free) / len(free), len(free)


def naive_certified(
    responses: Sequence[Sequence[int]], rewards: Sequence[float], groups: Sequence[int], group: int, prefix: Sequence[int],
    success_threshold: float = 1.0,
) -> bool:
    """The twin of :meth:`PrefixTree.certified`."""
    return any(rewards[i] >= success_threshold for i in _through(responses, groups, group, prefix))


def naive_shared_with_success(
    responses: Sequence[Sequence[int]], rewards: Sequence[float], groups: Sequence[int], row: int, success_threshold: float = 1.0,
) -> int:
    """The twin of :meth:`PrefixTree.shared_with_success`: the longest common prefix with each success."""
    best = 0
    for j, other in enumerate(responses):
        if j != row and groups[j] == groups[row] and rewards[j] >= success_threshold:
            n = 0
            for a, b in zip(responses[row], other):
                if a != b:
                    break
                n += 1
            best = max(best, n)
    return best
