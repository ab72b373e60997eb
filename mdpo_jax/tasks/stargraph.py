"""Star-graph path finding (Bachmann & Nagarajan, "The pitfalls of next-token prediction", 2024).

A star graph has one source node with `degree` arms; each arm is a simple path leaving the source.
The goal is the leaf of one arm; the answer is the path from the source to the goal. The graph is
given as its edge list in random order, so a left-to-right model must pick the right arm at the
first step without having traced it (the "Clever Hans" failure B&N describe), while a model that
can write the path in any order can start from the goal and walk back along the edges.

Serialisation (B&N's, with one character per node so a character tokenizer reads one token per
node): node i is the letter chr(ord("a") + i); an edge u→v is "uv"; the edges, shuffled, are
joined by "|"; then "/", the source, the goal and "=". The answer is the path's nodes without
separators. Example (degree 2, arms of 3 nodes, source "c", goal "e"):

    prompt  "cf|ce|fb|ea/ca="      answer  "cea"

Sizes. An arm's length counts its nodes *including the source*, like B&N's `pathLen` (their
degree 3 / path length 5 setting: arms of 4 edges, answers of 5 nodes). `task.arm_min` ==
`task.arm_max` gives B&N's graphs (every arm equally long; the ILM paper's "easy" split is
degree 3, length 5, 20 nodes); `arm_min < arm_max` draws each arm's length uniformly and
independently (our "medium" split: the answer's length is not known in advance). Nodes are drawn
without replacement from `task.graph_nodes` labels (≤ 26 letters).

Exact verification (`reward`): the completion, stripped of surrounding whitespace, must be a walk
along listed edges (in their direction) from the source to the goal that visits no node twice —
in a star graph that is the one source-to-goal path; any other text scores 0.
"""

from __future__ import annotations

import operator
import random
from typing import Iterable, NamedTuple

from mdpo_jax.tasks import base

__all__ = ["MAX_NODES", "StarGraph", "StarGraphTask", "generate_graphs", "node", "prompt",
           "reward", "star_reward", "verify_path"]

MAX_NODES = 26   # one lowercase letter per node


def node(i: int) -> str:
  """The label of node `i` (0 → "a")."""
  return chr(ord("a") + i)


class StarGraph(NamedTuple):
  """One problem: `edges` in prompt order (each a 2-letter string "uv" for u→v), the source and
  goal labels, and the source-to-goal `path` (a string of labels)."""
  edges: tuple[str, ...]
  source: str
  goal: str
  path: str

  def key(self) -> tuple:
    """The graph up to the order its edges are listed in."""
    return (tuple(sorted(self.edges)), self.source, self.goal)


def _one_graph(rng: random.Random, degree: int, arm_range: tuple[int, int],
               num_nodes: int) -> StarGraph:
  lengths = [rng.randint(*arm_range) for _ in range(degree)]
  labels = rng.sample(range(num_nodes), 1 + sum(n - 1 for n in lengths))
  source, rest = node(labels[0]), [node(i) for i in labels[1:]]
  arms, edges = [], []
  for n in lengths:
    arm, rest = [source] + rest[:n - 1], rest[n - 1:]
    arms.append(arm)
    edges += [u + v for u, v in zip(arm, arm[1:])]
  rng.shuffle(edges)
  path = rng.choice(arms)
  return StarGraph(tuple(edges), source, path[-1], "".join(path))


def generate_graphs(n: int, *, seed: int, degree: int = 3, arm_range: tuple[int, int] = (5, 5),
                    num_nodes: int = 20, exclude: Iterable[StarGraph] = ()) -> list[StarGraph]:
  """`n` distinct star graphs (by `StarGraph.key`), deterministic per `seed`; none with the key
  of a graph in `exclude`. Arms have `arm_range` = (low, high) nodes each, source included."""
  n, seed, degree = (operator.index(v) for v in (n, seed, degree))
  lo, hi = arm_range
  if n < 0 or degree < 1 or not 2 <= lo <= hi:
    raise ValueError(f"need n >= 0, degree >= 1 and 2 <= arm low <= arm high; got n={n}, "
                     f"degree={degree}, arm_range={arm_range}")
  if 1 + degree * (hi - 1) > num_nodes or num_nodes > MAX_NODES:
    raise ValueError(f"num_nodes={num_nodes}: must be in 1 + degree*(arm high - 1) = "
                     f"{1 + degree * (hi - 1)}..{MAX_NODES}")
  rng = random.Random(seed)
  seen = {g.key() for g in exclude}
  out: list[StarGraph] = []
  attempts, max_attempts = 0, 1000 + 100 * n
  while len(out) < n:
    attempts += 1
    if attempts > max_attempts:
      raise ValueError(f"could only generate {len(out)} of n={n} distinct star graphs")
    graph = _one_graph(rng, degree, (lo, hi), num_nodes)
    if graph.key() not in seen:
      seen.add(graph.key())
      out.append(graph)
  return out


def prompt(graph: StarGraph) -> str:
  """B&N's serialisation with one letter per node: ``"uv|uv|.../sg="``."""
  return "|".join(graph.edges) + f"/{graph.source}{graph.goal}="


def verify_path(text: str, graph: StarGraph) -> bool:
  """Whether `text` is a source-to-goal walk along the graph's edges visiting no node twice."""
  if not isinstance(text, str):
    return False
  walk = text.strip()
  edges = set(graph.edges)
  return (len(walk) >= 2 and walk[0] == graph.source and walk[-1] == graph.goal
          and len(set(walk)) == len(walk)
          and all(u + v in edges for u, v in zip(walk, walk[1:])))


def reward(completion: str, graph: StarGraph) -> float:
  """1.0 for the source-to-goal path (checked against the edges, `verify_path`), else 0.0."""
  return 1.0 if verify_path(completion, graph) else 0.0


def star_reward(completion: str, problem: StarGraph) -> float:
  """`reward` at module level (it pickles by reference to reward workers)."""
  return reward(completion, problem)


class StarGraphTask(base.ProceduralTask):
  """Procedural star graphs (`generate_graphs` with `task.graph_degree`, `task.arm_min`..
  `task.arm_max`, `task.graph_nodes`). Splits as in `base.ProceduralTask`, disjoint by graph
  (`StarGraph.key`). Prompt: `prompt`; SFT answer: the path; reward: `reward`."""

  name = "stargraph"
  reward = staticmethod(star_reward)

  def __init__(self, task_cfg, seed: int):
    super().__init__(task_cfg, seed)
    degree = base.check_int(task_cfg, "graph_degree", 1, MAX_NODES - 1)
    lo = base.check_int(task_cfg, "arm_min", 2, MAX_NODES)
    hi = base.check_int(task_cfg, "arm_max", lo, MAX_NODES,
                        f"an integer in task.arm_min ({lo})..{MAX_NODES}")
    need = 1 + degree * (hi - 1)
    nodes = base.check_int(task_cfg, "graph_nodes", need, MAX_NODES,
                           f"an integer in {need}..{MAX_NODES} (1 + graph_degree × (arm_max − 1)"
                           " nodes are drawn per graph; one letter each)")
    self._kwargs = dict(degree=degree, arm_range=(lo, hi), num_nodes=nodes)

  def _generate(self, n: int, seed: int, exclude: list, field: str) -> list[StarGraph]:
    try:
      return generate_graphs(n, seed=seed, exclude=exclude, **self._kwargs)
    except ValueError as e:
      raise ValueError(f"{field}={n}: {e}") from e

  def prompt(self, problem: StarGraph) -> str:
    return prompt(problem)

  def sft_answer(self, problem: StarGraph) -> str:
    return problem.path

  def key(self, problem: StarGraph) -> tuple:
    return problem.key()
