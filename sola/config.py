"""Configuration records for routing and edit training.

Both are recorded verbatim in the registry (routing config at `init`, training config with
every edit) so that any stored edit can be reproduced and any snapshot re-routed exactly.
"""

from __future__ import annotations

import getpass
import math
import numbers
import os
from dataclasses import asdict, dataclass, field, fields
from typing import Any

KEY_FUNCTIONS = ("mean", "last", "subject")
MAX_WINDOW = 64
REVOKE_MODES = ("tombstone", "delete")
# A subject-keyed `init` without --threshold/--radius-ratio: the subject-key study's choice at
# 1000 keys on SmolLM2-135M (docs/results.md, "Subject routing at 1000 keys";
# benchmarks/results/subject_keys_1000_*.json), which serves CounterFact, zsRE and a mixed bank
# alike. Subject distances are larger than mean-key ones: the two parts are read at lower blocks
# and a paraphrase matches the subject, not the template. Ratio 1 rather than 0.5: more
# paraphrases reach their edit at the same share of other-relation probes firing. Name ends on:
# a name inside a longer one ("David" in "David Bowie plays") no longer meets its key, which was
# 11 of the 48 CounterFact locality prompts a 1000-edit bank moved (docs/results.md, "Which
# locality prompts an edit moves"; benchmarks/results/locality_anatomy_*.json).
SUBJECT_ROUTING_DEFAULTS = {"threshold": 0.14, "radius_ratio": 1.0, "name_ends": True}
# A subject-keyed `init` without --stop-loss: a subject key reaches nearly every paraphrase
# (0.91 of CounterFact's over 1000 edits), so how many then get the target is the LoRA's fit
# alone. Fitting on to a loss of 0.01 rather than 0.05 carries the target to 0.83 of CounterFact
# paraphrases instead of 0.78 at block 20, for about one more step (+0.2 s an edit); a stricter
# 0.003 carries it further (0.87) but moves twice as many other-relation answers of zsRE's
# subjects (docs/results.md, "How far an edit is fitted"; benchmarks/results/value_side_*_L20_*.json).
SUBJECT_TRAINING_DEFAULTS = {"stop_loss": 0.01}
AFTER_TARGET = ("refresh", "stop", "keep")

# Upper bounds the CLI and these records share: a typo (`--steps 4000000`, `--lr 1e9`) is refused
# before the model loads instead of training for hours or to a NaN loss.
MAX_STEPS = 10_000
MAX_LR = 10.0
MAX_STOP_LOSS = 100.0
MAX_CONTEXTS = 8  # len(sola.train.TRAINING_CONTEXTS)
MAX_RELATION_PROMPTS = 16
MAX_RELATION_KL = 100.0
MAX_RANK = 1024
MAX_LAYER = 1024
MAX_RADIUS_RATIO = 100.0
MAX_BATCH = 1024  # edits trained at once (`--batch`)
DEFAULT_BATCH = 16  # docs/results.md, batched training: the throughput knee on 2 CPU cores
DEVICES = ("cpu", "cuda", "auto")


def resolve_device(device: str) -> str:
    """"cpu" or "cuda" for a `--device` choice ("auto": cuda when one is available); a cuda
    request without a CUDA device is refused before anything loads."""
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {str(device)[:80]!r}")
    if device == "cpu":
        return device
    import torch

    available = torch.cuda.is_available()
    if device == "cuda" and not available:
        raise ValueError("--device cuda: no CUDA device is available")
    return "cuda" if available else "cpu"


def default_author() -> str:
    """Who a command acts as when `--author` is not given: $SOLA_AUTHOR, else the login name
    (here, not in the workspace, so that commands that load no model never import torch)."""
    return os.environ.get("SOLA_AUTHOR") or getpass.getuser()


def _number(name: str, value: Any, integer: bool = False) -> float:
    """`value` as a finite number (an int when `integer`), or ValueError naming the setting."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or (integer and not isinstance(value, numbers.Integral)):
        raise ValueError(f"{name} must be {'an integer' if integer else 'a number'}, got {str(value)[:80]!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value}")
    return value


@dataclass(frozen=True)
class RoutingConfig:
    """Where edits live in the model and how a query is matched to a key.

    `module` is the path of the edited projection inside block `layer`, e.g. `mlp.up_proj`
    for Llama-family models or `mlp.c_fc` for GPT-2. `threshold` is a cosine distance
    (1 - cos) between L2-normalised vectors: a query fires the nearest key only when the
    distance is strictly below it. `key_function` says how the per-token inputs of the edited
    module over the prompt become one vector ("mean" over prompt tokens or "last" token), or
    "subject": a two-part key on the fact's subject (docs/concepts.md, "Subject keys"): the
    last subject token's input to `module` at block `key_layers[0]` and the subject span's mean
    input at block `key_layers[1]` (both at or below `layer`, so no edit changes a query); a
    query scores its best token and its best window of 1..`max_window` tokens against them.
    `start_token` (a token id, -1 for none) is put before every prompt the registry encodes, so
    that no subject starts at position 0, whose state is nearly the same for every prompt.
    `name_ends` (subject keys): a query's tokens and windows take part only where a name may end,
    not where the next token carries the name on ("David" in "David Bowie plays" does not meet a
    "David" edit; sola.keys.name_ends).

    `after_target` says how long a fired edit's LoRA applies while generating: "refresh" (the
    default for new registries: once its target's tokens have been generated the LoRA goes
    off and the sequence's cached keys/values are recomputed by the base model, so the text
    after the answer is what the base model writes after prompt + target; one extra prefill
    per fired sequence), "stop" (the LoRA goes off at the same step but the cache keeps what
    the LoRA computed, so the base model writes on from an edited context) or "keep" (the
    whole generation, the oldest behaviour).

    `radius_ratio` (> 0) shrinks the radius of a key that has close neighbours: key k fires
    only when the distance is also below `radius_ratio` x the distance from k to the nearest
    key of another active edit. Keys of one relation template crowd together, and the
    unrelated prompts that share their template are what a single global threshold lets
    through as the registry grows (docs/results.md, radius study); 0 turns it off.

    `revoke_mode` says what a revoke does to the edit's keys. "tombstone": they stay in the
    routing index and an input whose winning key is revoked gets the base model, so a revoke
    changes exactly the inputs that routed to the edit and returns each of them to the base
    output bit for bit, even when another edit's key is close (a restatement of the same
    fact). "delete" (the paper's): the keys leave the index, and such an input may be
    answered by the neighbouring edit instead.
    """

    layer: int = 8
    module: str = "mlp.up_proj"
    rank: int = 4
    alpha: float = 4.0
    threshold: float = 0.04
    key_function: str = "mean"
    duplicate_distance: float = 0.002
    radius_ratio: float = 0.5
    revoke_mode: str = "tombstone"
    key_layers: tuple[int, ...] = ()
    max_window: int = 8
    start_token: int = -1
    after_target: str = "refresh"
    name_ends: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "key_layers", tuple(self.key_layers) if isinstance(self.key_layers, (list, tuple)) else self.key_layers)
        if self.revoke_mode not in REVOKE_MODES:
            raise ValueError(f"revoke_mode must be one of {REVOKE_MODES}, got {str(self.revoke_mode)[:80]!r}")
        for name in ("alpha", "threshold", "duplicate_distance", "radius_ratio"):
            _number(name, getattr(self, name))
        for name in ("layer", "rank"):
            _number(name, getattr(self, name), integer=True)
        if not 0.0 <= self.radius_ratio <= MAX_RADIUS_RATIO:
            raise ValueError(f"radius_ratio must be from 0 (off) to {MAX_RADIUS_RATIO:g}, got {self.radius_ratio}")
        if not 1 <= self.rank <= MAX_RANK:
            raise ValueError(f"rank must be from 1 to {MAX_RANK}, got {self.rank}")
        if not 0.0 < self.threshold <= 2.0:
            raise ValueError(f"threshold must be in (0, 2], got {self.threshold}")
        if not 0.0 <= self.duplicate_distance <= 2.0:
            raise ValueError(f"duplicate_distance must be in [0, 2], got {self.duplicate_distance}")
        if not self.alpha > 0:
            raise ValueError(f"alpha must be > 0, got {self.alpha}")
        if self.key_function not in KEY_FUNCTIONS:
            raise ValueError(f"key_function must be one of {KEY_FUNCTIONS}, got {str(self.key_function)[:80]!r}")
        if not isinstance(self.module, str) or not self.module or len(self.module) > 200:
            raise ValueError(f"module must be a dotted module path such as mlp.up_proj, got {str(self.module)[:80]!r}")
        if not 0 <= self.layer <= MAX_LAYER:
            raise ValueError(f"layer must be from 0 to {MAX_LAYER}, got {self.layer}")
        if not isinstance(self.key_layers, tuple) or len(self.key_layers) not in (0, 2):
            raise ValueError(f"key_layers must be two block indices (token layer, span layer), got {str(self.key_layers)[:80]!r}")
        for value in self.key_layers:
            _number("key_layers", value, integer=True)
            if not 0 <= value <= self.layer:
                raise ValueError(f"key_layers must lie at or below the edited layer {self.layer}, got {value}")
        _number("max_window", self.max_window, integer=True)
        if not 1 <= self.max_window <= MAX_WINDOW:
            raise ValueError(f"max_window must be from 1 to {MAX_WINDOW}, got {self.max_window}")
        _number("start_token", self.start_token, integer=True)
        if self.after_target not in AFTER_TARGET:
            raise ValueError(f"after_target must be one of {AFTER_TARGET}, got {str(self.after_target)[:80]!r}")
        if self.start_token < -1:
            raise ValueError(f"start_token must be a token id or -1 (none), got {self.start_token}")
        if not isinstance(self.name_ends, bool):
            raise ValueError(f"name_ends must be true or false, got {str(self.name_ends)[:80]!r}")

    @property
    def subject_layers(self) -> tuple[int, int]:
        """(token layer, span layer) of a subject key: as recorded, else blocks 4 and 3 (the key
        study's best, DESIGN.md 3b) or the edited layer when it lies lower."""
        if self.key_layers:
            return int(self.key_layers[0]), int(self.key_layers[1])
        return min(4, self.layer), min(3, self.layer)

    @property
    def read_layers(self) -> tuple[int, ...]:
        """The blocks whose `module` inputs a key reads (all at or below the edited layer)."""
        return tuple(sorted(set(self.subject_layers))) if self.key_function == "subject" else (self.layer,)

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def to_dict(self) -> dict[str, Any]:
        return dict(asdict(self), key_layers=list(self.key_layers))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RoutingConfig":
        """Settings given by a user: anything missing takes today's default."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> "RoutingConfig":
        """A routing config recorded by a registry, snapshot or edit: a field added after it was
        written takes the value that reproduces how it routed then, not today's default."""
        # records before radius_ratio routed by the global threshold only; before revoke_mode, a
        # revoke deleted the keys
        # before after_target, a routed edit's LoRA stayed on for the whole generation
        # and every record names its key function, but one without it was keyed by the mean (the
        # default for new Llama-family registries is the subject key now: sola.arch)
        # before name_ends, a subject query's every token and window took part
        return cls.from_dict({"radius_ratio": 0.0, "revoke_mode": "delete", "after_target": "keep", "key_function": "mean",
                              "name_ends": False, **record})


@dataclass(frozen=True)
class TrainConfig:
    """How one edit's LoRA is fitted. Recorded with each edit as provenance."""

    max_steps: int = 40
    lr: float = 0.1
    optimizer: str = "adam"
    stop_loss: float = 0.05
    init_std: float = 0.02
    seed: int = 0
    # value-side generalisation (docs/results.md section 7): the target is also fitted after this
    # many generic context sentences (sola.train.TRAINING_CONTEXTS), so it does not hang on the
    # prompt's exact opening
    contexts: int = 0
    # relation specificity: the next-token distribution on this many other-relation prompts of the
    # subject (sola.probes.training_prompts) is held to the base model's, weight `relation_kl`
    relation_prompts: int = 0
    relation_kl: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # refused before the model loads, so a typo never costs a training run (or a NaN edit)
        for name in ("lr", "stop_loss", "init_std", "relation_kl"):
            _number(name, getattr(self, name))
        for name in ("max_steps", "seed", "contexts", "relation_prompts"):
            _number(name, getattr(self, name), integer=True)
        if not 0 <= self.max_steps <= MAX_STEPS:
            raise ValueError(f"max_steps must be from 0 to {MAX_STEPS}, got {self.max_steps}")
        if not 0 < self.lr <= MAX_LR:
            raise ValueError(f"lr must be > 0 and at most {MAX_LR:g}, got {self.lr}")
        if not 0 < self.stop_loss <= MAX_STOP_LOSS:
            raise ValueError(f"stop_loss must be > 0 and at most {MAX_STOP_LOSS:g}, got {self.stop_loss}")
        if not 0 <= self.contexts <= MAX_CONTEXTS:
            raise ValueError(f"contexts must be from 0 to {MAX_CONTEXTS}, got {self.contexts}")
        if not 0 <= self.relation_prompts <= MAX_RELATION_PROMPTS:
            raise ValueError(f"relation_prompts must be from 0 to {MAX_RELATION_PROMPTS}, got {self.relation_prompts}")
        if not 0 <= self.relation_kl <= MAX_RELATION_KL:
            raise ValueError(f"relation_kl must be from 0 to {MAX_RELATION_KL:g}, got {self.relation_kl}")
        if not 0 <= self.init_std <= 1:
            raise ValueError(f"init_std must be from 0 to 1, got {self.init_std}")
        if not 0 <= self.seed < 2**63:
            raise ValueError(f"seed must be from 0 to 2**63-1, got {self.seed}")
        if self.optimizer not in ("adam", "sgd"):
            raise ValueError(f"optimizer must be adam or sgd, got {str(self.optimizer)[:80]!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def defaults_for(cls, key_function: str) -> dict[str, Any]:
        """The training a new registry keyed by `key_function` records where `init` was given
        none: SUBJECT_TRAINING_DEFAULTS for subject keys, over this class's defaults."""
        return cls.from_dict(SUBJECT_TRAINING_DEFAULTS if key_function == "subject" else {}).to_dict()

    @classmethod
    def resolve(cls, recorded: dict[str, Any], **given: Any) -> "TrainConfig":
        """Settings a user gave (None = not given) over a registry's recorded default, over ours."""
        return cls.from_dict({**recorded, **{name: value for name, value in given.items() if value is not None}})
