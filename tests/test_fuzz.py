"""Bad input, table-driven, across every command: each case must fail with a non-zero exit,
exactly one `error:` line on stderr, no traceback, and leave the registry as it was (its
`log --json`, every table as a raw read-only DuckDB connection reads it, every file but the
derived `cache/`).

The fast table runs on a registry built through the store with random tensors
(tests/registry_helpers.py; its base model "tiny" is not loadable, so a case that reached a
model load would fail with the wrong message); the model table needs the tiny Llama of
tests/conftest.py and checks the limits only a loaded model can (context length, modules).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import duckdb
import pytest
from click.testing import CliRunner

from registry_helpers import add_edit, new_registry
from sola.cli import main

LONG = "x" * 40_000  # over every text limit (32k characters)
HUGE = str(10**30)  # over every integer bound, int64 included
BAD_UTF8 = "caf\udce9"  # what the undecodable byte 0xe9 in an argument becomes
P = "The capital of France is"

BAD_FLOATS = ["nan", "inf", "-inf", "NaN", "1e400", "abc", ""]


def _jsonl(records: list[object]) -> str:
    return "\n".join(r if isinstance(r, str) else json.dumps(r) for r in records) + "\n"


# files the cases read, written into the fixture's scratch directory: name -> text (or bytes)
FILES: dict[str, str | bytes] = {
    "subject_number.jsonl": _jsonl([{"prompt": P, "target_new": "Rome", "subject": 5}]),
    "subject_object.jsonl": _jsonl([{"prompt": P, "target_new": "Rome", "subject": {"name": "France"}}]),
    "prompt_number.jsonl": _jsonl([{"prompt": 5, "target_new": "Rome"}]),
    "prompt_null.jsonl": _jsonl([{"prompt": None, "target_new": "Rome"}]),
    "target_list.jsonl": _jsonl([{"prompt": P, "target_new": ["Rome"]}]),
    "target_bool.jsonl": _jsonl([{"prompt": P, "target_new": True}]),
    "rephrase_number.jsonl": _jsonl([{"prompt": P, "target_new": "Rome", "rephrase_prompt": 5}]),
    "rephrase_list_number.jsonl": _jsonl([{"prompt": P, "target_new": "Rome", "rephrase_prompt": ["ok", 1]}]),
    "locality_number.jsonl": _jsonl([{"prompt": P, "target_new": "Rome", "locality_prompt": 7}]),
    "zsre_subject_list.jsonl": _jsonl([{"src": P, "alt": "Rome", "subject": ["x"]}]),
    "second_line_bad.jsonl": _jsonl([{"prompt": P, "target_new": "Rome"}, {"prompt": "Toko Yasuda plays the", "target_new": 3}]),
    "not_object.jsonl": _jsonl([[P, "Rome"]]),
    "missing_target.jsonl": _jsonl([{"prompt": P}]),
    "empty_prompt.jsonl": _jsonl([{"prompt": " ", "target_new": "Rome"}]),
    "long_prompt.jsonl": _jsonl([{"prompt": LONG, "target_new": "Rome"}]),
    "surrogate.jsonl": '{"prompt": "caf\\udce9 is", "target_new": "Rome"}\n',
    "nul.jsonl": _jsonl([{"prompt": "a\x00b", "target_new": "Rome"}]),
    "not_json.jsonl": "{prompt: nope}\n",
    "nested.jsonl": "[" * 100_000 + "]" * 100_000 + "\n",
    "empty.jsonl": "\n\n",
    "latin1.jsonl": '{"prompt": "caf\xe9", "target_new": "Rome"}\n'.encode("latin-1"),
    "many_rephrases.jsonl": _jsonl([{"prompt": P, "target_new": "Rome", "rephrase_prompt": ["r"] * 100}]),
    "garbage.json": "not json at all",
    "checkpoint.json": "{}",
}


def numeric(command: list[str], option: str, values: list[str], expect: str | None = None) -> list[tuple[str, list[str], str | None]]:
    return [(f"{' '.join(command[:2])} {option}={value or 'empty'}", [*command, option, value], expect or option) for value in values]


EDIT = ["edit", "--prompt", P, "--target", "Rome"]
GEN = ["generate", P]

# (id, arguments with {placeholders}, a substring the error line must contain, or None)
CASES: list[tuple[str, list[str], str | None]] = [
    # --- usage --------------------------------------------------------------------------------
    ("unknown command", ["nope"], "No such command"),
    ("unknown option", ["log", "--nope"], "--nope"),
    ("no registry", ["--registry", "{missing}", "log"], "no registry at"),
    ("no registry for a write", ["--registry", "{missing}", "tag", "v9"], "no registry at"),
    ("registry option surrogate", ["--registry", "{missing}" + BAD_UTF8, "log"], "no registry at"),
    # --- init ---------------------------------------------------------------------------------
    ("init over a registry", ["init"], "already exists"),
    ("init model missing", ["--registry", "{fresh}", "init", "--model", "{missing}"], "model not found"),
    ("init pickle directory", ["--registry", "{fresh}", "init", "--model", "{pickle_dir}"], "pickle"),
    ("init bad key function", ["init", "--key-function", "max"], "--key-function"),
    ("init bad revoke mode", ["init", "--revoke-mode", "forget"], "--revoke-mode"),
    ("init author too long", ["--registry", "{fresh}", "init", "--author", "a" * 300], "--author"),
    *numeric(["init"], "--lr", [*BAD_FLOATS, "0", "-1", "11", "1e9"]),
    *numeric(["init"], "--stop-loss", [*BAD_FLOATS, "0", "-0.5", "1000"]),
    *numeric(["init"], "--steps", ["-1", HUGE, "1.5", "abc", "10001"]),
    *numeric(["init"], "--threshold", [*BAD_FLOATS, "0", "-0.1", "2.5"]),
    *numeric(["init"], "--radius-ratio", [*BAD_FLOATS, "-0.1", "1000"]),
    *numeric(["init"], "--rank", ["0", "-1", HUGE, "2.5"]),
    *numeric(["init"], "--layer", ["-1", HUGE, "1e3"]),
    *numeric(["--registry", "{fresh}", "init"], "--lr", ["inf", "nan"]),
    # --- edit ---------------------------------------------------------------------------------
    ("edit no target", ["edit", "--prompt", P], "--prompt and --target are required"),
    ("edit nothing", ["edit"], "required"),
    ("edit empty prompt", ["edit", "--prompt", "", "--target", "Rome"], "empty prompt"),
    ("edit blank prompt", ["edit", "--prompt", "   ", "--target", "Rome"], "empty prompt"),
    ("edit empty target", ["edit", "--prompt", P, "--target", ""], "empty target"),
    ("edit blank rephrase", [*EDIT, "--rephrase", " "], "empty rephrase"),
    ("edit prompt surrogate", ["edit", "--prompt", BAD_UTF8, "--target", "Rome"], "not valid UTF-8"),
    ("edit target surrogate", ["edit", "--prompt", P, "--target", BAD_UTF8], "not valid UTF-8"),
    ("edit subject surrogate", [*EDIT, "--subject", BAD_UTF8], "not valid UTF-8"),
    ("edit reason surrogate", [*EDIT, "--reason", BAD_UTF8], "not valid UTF-8"),
    ("edit prompt too long", ["edit", "--prompt", LONG, "--target", "Rome"], "characters long"),
    ("edit target too long", ["edit", "--prompt", P, "--target", LONG], "characters long"),
    ("edit rephrase too long", [*EDIT, "--rephrase", LONG], "characters long"),
    ("edit subject too long", [*EDIT, "--subject", LONG], "characters long"),
    ("edit reason too long", [*EDIT, "--reason", "r" * 5000], "limit is 4000"),
    ("edit source too long", [*EDIT, "--source", "s" * 5000], "limit is 4000"),
    ("edit author too long", [*EDIT, "--author", "a" * 300], "limit is 200"),
    ("edit file and prompt", ["edit", "--file", "{dir}/subject_number.jsonl", "--prompt", P], "not both"),
    ("edit file and supersede", ["edit", "--file", "{dir}/subject_number.jsonl", "--supersede", "{e1}"], "--supersede"),
    ("edit file missing", ["edit", "--file", "{missing}"], "cannot read"),
    ("edit file is a directory", ["edit", "--file", "{dir}"], "--file"),
    ("edit supersede revoked", [*EDIT, "--supersede", "{revoked}"], "cannot supersede"),
    ("edit supersede off branch", [*EDIT, "--supersede", "{side_edit}"], "cannot supersede"),
    ("edit supersede unknown", [*EDIT, "--supersede", "ffffffff"], "unknown edit"),
    ("edit supersede too short", [*EDIT, "--supersede", "ab"], "unknown edit"),
    ("edit unknown branch", [*EDIT, "--branch", "nope"], "unknown branch"),
    ("edit branch is a tag", [*EDIT, "--branch", "v1"], "it is a tag"),
    ("edit protected branch", [*EDIT, "--branch", "guarded"], "protected"),
    ("edit empty branch", [*EDIT, "--branch", ""], "unknown branch"),
    *[(f"edit --file {name}", ["edit", "--file", f"{{dir}}/{name}"], expect) for name, expect in [
        ("subject_number.jsonl", ":1: subject must be a string"), ("subject_object.jsonl", ":1: subject must be a string"),
        ("prompt_number.jsonl", ":1: prompt must be a string"), ("prompt_null.jsonl", ":1: prompt must be a string"),
        ("target_list.jsonl", ":1: target must be a string"), ("target_bool.jsonl", ":1: target must be a string"),
        ("rephrase_number.jsonl", ":1: rephrase_prompt must be"), ("rephrase_list_number.jsonl", ":1: rephrase_prompt must be"),
        ("locality_number.jsonl", ":1: locality prompt must be"), ("zsre_subject_list.jsonl", ":1: subject must be"),
        ("second_line_bad.jsonl", ":2: target must be a string"), ("not_object.jsonl", ":1: record is not a JSON object"),
        ("missing_target.jsonl", ":1: missing field(s) target_new"), ("empty_prompt.jsonl", ":1: empty prompt"),
        ("long_prompt.jsonl", ":1: prompt is 40000 characters"), ("surrogate.jsonl", ":1: prompt is not valid UTF-8"),
        ("nul.jsonl", ":1: prompt contains a NUL"), ("not_json.jsonl", ":1: not valid JSON"), ("nested.jsonl", ":1: JSON nested"),
        ("empty.jsonl", "no edit requests"), ("latin1.jsonl", "cannot read"), ("many_rephrases.jsonl", "the limit is 64")]],
    *numeric(EDIT, "--lr", [*BAD_FLOATS, "0", "-1", "11"]),
    *numeric(EDIT, "--stop-loss", [*BAD_FLOATS, "0", "-1"]),
    *numeric(EDIT, "--steps", ["-1", HUGE, "1.5", "abc", "", "10001"]),
    *numeric(EDIT, "--wait", [*BAD_FLOATS, "-1", "1e9"]),
    # --- generate -----------------------------------------------------------------------------
    ("generate no prompt", ["generate"], "PROMPT"),
    ("generate empty prompt", ["generate", ""], "empty prompt"),
    ("generate blank prompt", ["generate", "  \t "], "empty prompt"),
    ("generate surrogate prompt", ["generate", BAD_UTF8], "not valid UTF-8"),
    ("generate prompt too long", ["generate", LONG], "characters long"),
    ("generate empty rev", [*GEN, "--rev", ""], "empty revision"),
    ("generate bare tilde", [*GEN, "--rev", "main~"], "bad revision"),
    ("generate tilde zero", [*GEN, "--rev", "main~0"], "goes nowhere"),
    ("generate bare caret", [*GEN, "--rev", "main^"], "bad revision"),
    ("generate past first", [*GEN, "--rev", "main~99"], "past the first commit"),
    ("generate second parent", [*GEN, "--rev", "main^2"], "parent"),
    ("generate unknown rev", [*GEN, "--rev", "nope"], "unknown revision"),
    ("generate rev too long", [*GEN, "--rev", LONG], "characters long"),
    ("generate rev 100 chars", [*GEN, "--rev", "r" * 100], "unknown revision"),
    ("generate empty time", [*GEN, "--rev", "main@"], "bad revision"),
    ("generate bad time", [*GEN, "--rev", "main@yesterday"], None),
    ("generate before the registry", [*GEN, "--at", "1999-01-01T00:00:00Z"], "did not exist"),
    ("generate bad --at", [*GEN, "--at", "tomorrow"], None),
    ("generate empty --at", [*GEN, "--at", ""], None),
    ("generate --at with ~", [*GEN, "--rev", "main~1", "--at", "2026-01-01T00:00:00Z"], "give a time once"),
    ("generate missing snapshot", [*GEN, "--snapshot", "{missing}"], None),
    *numeric(GEN, "--max-new-tokens", ["0", "-1", HUGE, "1.5", "abc", "32769"]),
    *numeric(GEN, "--wait", ["nan", "inf", "-1"]),
    # --- revoke / restore ---------------------------------------------------------------------
    ("revoke no reason", ["revoke", "{e1}"], "--reason"),
    ("revoke empty reason", ["revoke", "{e1}", "--reason", ""], "reason"),
    ("revoke blank reason", ["revoke", "{e1}", "--reason", "   "], "reason"),
    ("revoke reason too long", ["revoke", "{e1}", "--reason", "r" * 5000], "limit is 4000"),
    ("revoke reason surrogate", ["revoke", "{e1}", "--reason", BAD_UTF8], "not valid UTF-8"),
    ("revoke author too long", ["revoke", "{e1}", "--reason", "x", "--author", "a" * 300], "limit is 200"),
    ("revoke unknown", ["revoke", "ffffffff", "--reason", "x"], "unknown edit"),
    ("revoke empty id", ["revoke", "", "--reason", "x"], "unknown edit"),
    ("revoke short id", ["revoke", "abc", "--reason", "x"], "unknown edit"),
    ("revoke long id", ["revoke", LONG, "--reason", "x"], "characters long"),
    ("revoke 100-char id", ["revoke", "f" * 100, "--reason", "x"], "unknown edit"),
    ("revoke already revoked", ["revoke", "{revoked}", "--reason", "x"], "already revoked"),
    ("revoke not on branch", ["revoke", "{side_edit}", "--reason", "x"], "not on branch"),
    ("revoke unknown branch", ["revoke", "{e1}", "--reason", "x", "--branch", "nope"], "unknown branch"),
    ("revoke tag branch", ["revoke", "{e1}", "--reason", "x", "--branch", "v1"], "tag"),
    ("revoke protected", ["revoke", "{e1}", "--reason", "x", "--branch", "guarded"], "protected"),
    ("revoke missing object", ["revoke", "{lost}", "--reason", "x"], "is missing"),
    *numeric(["revoke", "{e1}", "--reason", "x"], "--wait", ["nan", "inf", "-1"]),
    ("restore active", ["restore", "{e1}", "--reason", "x"], "already active"),
    ("restore never on branch", ["restore", "{side_edit}", "--reason", "x"], "never on branch"),
    ("restore unknown", ["restore", "ffffffff", "--reason", "x"], "unknown edit"),
    ("restore no reason", ["restore", "{revoked}"], "--reason"),
    ("restore empty reason", ["restore", "{revoked}", "--reason", ""], "reason"),
    ("restore protected", ["restore", "{revoked}", "--reason", "x", "--branch", "guarded"], None),
    # --- log / show / diff --------------------------------------------------------------------
    *numeric(["log"], "--limit", ["-1", HUGE, str(2**63), "abc", "1.5", ""]),
    ("log empty rev", ["log", "--rev", ""], "empty revision"),
    ("log bare tilde", ["log", "--rev", "main~"], "bad revision"),
    ("log unknown rev", ["log", "--rev", "nope"], "unknown revision"),
    ("log rev too far", ["log", "--rev", "main~99"], "past the first commit"),
    ("log rev huge steps", ["log", "--rev", "main~" + HUGE], None),
    ("log rev surrogate", ["log", "--rev", BAD_UTF8], "not valid UTF-8"),
    ("show nothing", ["show", ""], None),
    ("show unknown", ["show", "nope"], None),
    ("show unknown hex", ["show", "ffffffffffff"], None),
    ("show too long", ["show", LONG], "characters long"),
    ("show surrogate", ["show", BAD_UTF8], "not valid UTF-8"),
    ("diff unknown", ["diff", "main", "nope"], "unknown revision"),
    ("diff empty", ["diff", "", "main"], "empty revision"),
    ("diff one argument", ["diff", "main"], "REV_B"),
    ("diff bare caret", ["diff", "main^", "main"], "bad revision"),
    # --- tag / branch -------------------------------------------------------------------------
    ("tag exists", ["tag", "v1"], "already exists"),
    ("tag over a branch", ["tag", "main"], "already exists"),
    ("tag empty name", ["tag", ""], "invalid tag name"),
    ("tag with tilde", ["tag", "v~1"], "invalid tag name"),
    ("tag with space", ["tag", "v 1"], "invalid tag name"),
    ("tag with at", ["tag", "v@1"], "invalid tag name"),
    ("tag like a commit", ["tag", "abcd1234"], "commit id"),
    ("tag dot dot", ["tag", ".."], "invalid tag name"),
    ("tag name 201 chars", ["tag", "t" * 201], "invalid tag name"),
    ("tag name too long", ["tag", LONG], "characters long"),
    ("tag name surrogate", ["tag", BAD_UTF8], "not valid UTF-8"),
    ("tag name newline", ["tag", "v\n1"], "invalid tag name"),
    ("tag unknown rev", ["tag", "v9", "nope"], "unknown revision"),
    ("tag empty rev", ["tag", "v9", ""], "empty revision"),
    ("tag author too long", ["tag", "v9", "--author", "a" * 300], "limit is 200"),
    ("tag wait nan", ["tag", "v9", "--wait", "nan"], "--wait"),
    ("branch exists", ["branch", "side"], "already exists"),
    ("branch main", ["branch", "main"], "already exists"),
    ("branch bad name", ["branch", "a^b"], "invalid branch name"),
    ("branch dash name", ["branch", "--", "-x"], "invalid branch name"),
    ("branch unknown rev", ["branch", "new", "nope"], "unknown revision"),
    ("branch empty rev", ["branch", "new", ""], "empty revision"),
    ("branch rev without name", ["branch", "--delete"], "name the branch"),
    ("branch delete main", ["branch", "--delete", "main"], "cannot delete main"),
    ("branch delete unknown", ["branch", "--delete", "nope"], "unknown branch"),
    ("branch delete tag", ["branch", "--delete", "v1"], "tag"),
    ("branch delete protected", ["branch", "--delete", "guarded"], "protected"),
    ("branch delete unmerged", ["branch", "--delete", "side"], "no other branch or tag"),
    ("branch delete with rev", ["branch", "--delete", "side", "main"], "only the branch name"),
    # --- cherry-pick / revert / merge / snapshot ----------------------------------------------
    ("cherry-pick no onto", ["cherry-pick", "{side_edit}"], "--onto"),
    ("cherry-pick unknown edit", ["cherry-pick", "ffffffff", "--onto", "main"], "unknown edit"),
    ("cherry-pick unknown branch", ["cherry-pick", "{side_edit}", "--onto", "nope"], "unknown branch"),
    ("cherry-pick onto tag", ["cherry-pick", "{side_edit}", "--onto", "v1"], "tag"),
    ("cherry-pick onto protected", ["cherry-pick", "{side_edit}", "--onto", "guarded"], "protected"),
    ("cherry-pick already active", ["cherry-pick", "{e1}", "--onto", "main"], "already active"),
    ("cherry-pick no edits", ["cherry-pick", "--onto", "main"], "EDITS"),
    ("revert no reason", ["revert", "main"], "--reason"),
    ("revert first commit", ["revert", "main~5", "--reason", "x"], "nothing to revert"),
    ("revert unknown", ["revert", "nope", "--reason", "x"], "unknown revision"),
    ("revert off branch", ["revert", "side", "--reason", "x"], "not in the history"),
    ("revert unknown branch", ["revert", "main", "--reason", "x", "--branch", "nope"], "unknown branch"),
    ("revert empty reason", ["revert", "main", "--reason", " "], "reason"),
    ("merge no reason", ["merge", "side", "--into", "main"], "--reason"),
    ("merge no into", ["merge", "side", "--reason", "x"], "--into"),
    ("merge into itself", ["merge", "main", "--into", "main", "--reason", "x"], "itself"),
    ("merge unknown source", ["merge", "nope", "--into", "main", "--reason", "x"], None),
    ("merge unknown target", ["merge", "side", "--into", "nope", "--reason", "x"], "unknown branch"),
    ("merge into protected", ["merge", "side", "--into", "guarded", "--reason", "x"], "protected"),
    ("merge bad resolve", ["merge", "side", "--into", "main", "--reason", "x", "--resolve", "abc"], "--resolve"),
    ("merge bad resolve side", ["merge", "side", "--into", "main", "--reason", "x", "--resolve", "{e1}=mine"], "--resolve"),
    ("snapshot exists", ["snapshot", "side", "--from", "main"], "already exists"),
    ("snapshot no from", ["snapshot", "new"], "--from"),
    ("snapshot unknown from", ["snapshot", "new", "--from", "nope"], "unknown revision"),
    ("snapshot bad name", ["snapshot", "a b", "--from", "main"], "invalid"),
    ("snapshot where unknown column", ["snapshot", "new", "--from", "main", "--where", "nope = 1"], None),
    ("snapshot where injection", ["snapshot", "new", "--from", "main", "--where", "1=1; DROP TABLE edits"], None),
    ("snapshot where subquery", ["snapshot", "new", "--from", "main", "--where", "edit_id IN (SELECT edit_id FROM refs)"], None),
    ("snapshot where too long", ["snapshot", "new", "--from", "main", "--where", LONG], "characters long"),
    ("snapshot include unknown", ["snapshot", "new", "--from", "main", "--include", "ffffffff"], "unknown edit"),
    ("snapshot exclude inactive", ["snapshot", "new", "--from", "main", "--exclude", "{revoked}"], "not an active edit"),
    ("snapshot include active", ["snapshot", "new", "--from", "main", "--include", "{e1}"], "already in the chosen set"),
    # --- protect / review / blame -------------------------------------------------------------
    ("protect neither", ["protect", "main"], "--reviews N or --off"),
    ("protect both", ["protect", "main", "--reviews", "1", "--off"], "--reviews N or --off"),
    ("protect unknown", ["protect", "nope", "--reviews", "1"], "unknown branch"),
    ("protect tag", ["protect", "v1", "--reviews", "1"], "tag"),
    ("protect same", ["protect", "guarded", "--reviews", "1"], "already"),
    ("unprotect unprotected", ["protect", "main", "--off"], "already"),
    *numeric(["protect", "main"], "--reviews", ["0", "101", "-1", "abc", HUGE]),
    ("review no author", ["review", "approve", "side", "--into", "main"], "--author"),
    ("review no into", ["review", "approve", "side", "--author", "carol"], "--into"),
    ("review itself", ["review", "approve", "main", "--into", "main", "--author", "carol"], "itself"),
    ("review own work", ["review", "approve", "side", "--into", "main", "--author", "tester"], "someone else"),
    ("review unknown source", ["review", "approve", "nope", "--into", "main", "--author", "carol"], "unknown branch"),
    ("review stale commit", ["review", "reject", "side", "--into", "main", "--author", "carol", "--commit", "main"], "stale"),
    ("review nothing to review", ["review", "approve", "v1", "--into", "main", "--author", "carol"], None),
    ("review unknown verdict", ["review", "maybe", "side"], "No such command"),
    ("blame empty prompt", ["blame", ""], "empty prompt"),
    ("blame surrogate", ["blame", BAD_UTF8], "not valid UTF-8"),
    ("blame unknown branch", ["blame", P, "--branch", "nope"], "unknown revision"),
    *numeric(["blame", P], "--max-new-tokens", ["0", "-1", "4097", HUGE]),
    # --- rebase (and --batch, --device of edit and eval) --------------------------------------
    ("rebase no onto", ["rebase", "--into", "{fresh}"], "--onto"),
    ("rebase no into", ["rebase", "--onto", "{missing}"], "--into"),
    ("rebase unknown from", ["rebase", "--onto", "{missing}", "--into", "{fresh}", "--from", "nope"], "unknown revision"),
    ("rebase onto missing model", ["rebase", "--onto", "{missing}", "--into", "{fresh}"], "model not found"),
    ("rebase eval data missing", ["rebase", "--onto", "{missing}", "--into", "{fresh}", "--eval-data", "{missing}"], "--eval-data"),
    ("rebase author too long", ["rebase", "--onto", "{missing}", "--into", "{fresh}", "--author", "a" * 300], "--author"),
    ("rebase bad device", ["rebase", "--onto", "{missing}", "--into", "{fresh}", "--device", "tpu"], "--device"),
    *numeric(["rebase", "--onto", "{missing}", "--into", "{fresh}"], "--batch", ["0", "-1", "1025", HUGE]),
    *numeric(["rebase", "--onto", "{missing}", "--into", "{fresh}"], "--threshold", ["0", "nan", "3"]),
    *numeric([*EDIT], "--batch", ["0", "1025", "x"]),
    ("edit bad device", [*EDIT, "--device", "tpu"], "--device"),
    # --- audit / conflicts / verify / checkpoint / gc -----------------------------------------
    ("audit bad since", ["audit", "--since", "yesterday"], None),
    ("audit unknown rev", ["audit", "--rev", "nope"], "unknown revision"),
    ("audit empty rev", ["audit", "--rev", ""], "empty revision"),
    ("audit revoked unknown rev", ["audit", "--revoked", "--rev", "nope"], "unknown revision"),
    ("conflicts unknown rev", ["conflicts", "--rev", "nope"], "unknown revision"),
    ("conflicts empty rev", ["conflicts", "--rev", ""], "empty revision"),
    ("verify missing checkpoint", ["verify", "--checkpoint", "{missing}"], None),
    ("verify key without checkpoint", ["verify", "--public-key", "{missing}"], "--public-key"),
    ("verify empty checkpoint", ["verify", "--checkpoint", "{dir}/checkpoint.json"], None),
    ("verify garbage checkpoint", ["verify", "--checkpoint", "{dir}/garbage.json"], None),
    ("checkpoint sign missing key", ["checkpoint", "--sign", "{missing}"], None),
    ("checkpoint sign and new key", ["checkpoint", "--sign", "{missing}", "--new-key", "{missing}"], "--new-key alone"),
    ("gc wait nan", ["gc", "--wait", "nan"], "--wait"),
    # --- shared storage (URLs are refused before anything connects) ----------------------------
    ("init catalog with a password", ["--registry", "{fresh}", "init", "--catalog", "postgresql://u:pw@127.0.0.1/db"], "password"),
    ("init catalog not postgres", ["--registry", "{fresh}", "init", "--catalog", "sqlite:///x.db"], "expected postgresql://"),
    ("init catalog bad schema", ["--registry", "{fresh}", "init", "--catalog", "postgresql://u@h/db?schema=x;drop"], "SQL name"),
    ("init catalog unknown parameter", ["--registry", "{fresh}", "init", "--catalog", "postgresql://u@h/db?sslmode=off"], "unknown URL parameter"),
    ("init objects not s3", ["--registry", "{fresh}", "init", "--objects", "/tmp/objects"], "expected s3://"),
    ("init objects with credentials", ["--registry", "{fresh}", "init", "--objects", "s3://key:secret@bucket/p"], "credentials"),
    ("init join without catalog", ["--registry", "{fresh}", "init", "--join"], "--join needs --catalog"),
    ("init join with a setting", ["--registry", "{fresh}", "init", "--join", "--catalog", "postgresql://u@127.0.0.1:1/db", "--layer", "3"],
     "--layer cannot"),
    ("init join over a registry", ["init", "--join", "--catalog", "postgresql://u@127.0.0.1:1/db"], "already exists"),
    ("migrate-storage without --to", ["migrate-storage"], "--to"),
    ("migrate-storage a missing object", ["migrate-storage", "--to", "{fresh}"], "missing"),
    ("migrate-storage bad catalog", ["migrate-storage", "--to", "{fresh}", "--to-catalog", "mysql://u@h/db"], "expected postgresql://"),
    ("migrate-storage bad objects", ["migrate-storage", "--to", "{fresh}", "--to-objects", "gs://bucket"], "expected s3://"),
    ("migrate-storage wait nan", ["migrate-storage", "--to", "{fresh}", "--wait", "nan"], "--wait"),
    ("gc unknown option", ["gc", "--all"], "--all"),
    # --- export / eval / serve ----------------------------------------------------------------
    ("export unknown rev", ["export", "nope", "{dir}/export"], "unknown revision"),
    ("export before the registry", ["export", "1999-01-01T00:00:00Z", "{dir}/export"], "did not exist"),
    ("export into a file", ["export", "main", "{dir}/garbage.json"], None),
    ("export into non-empty dir", ["export", "main", "{dir}"], "not empty"),
    ("export-edit unknown", ["export-edit", "ffffffff", "{dir}/peft"], "unknown edit"),
    ("export-edit missing object", ["export-edit", "{lost}", "{dir}/peft"], "missing"),
    ("eval missing data", ["eval", "--data", "{missing}"], "--data"),
    ("eval no data", ["eval"], "--data"),
    ("eval garbage data", ["eval", "--data", "{dir}/garbage.json", "--limit", "1"], "not valid JSON"),
    ("eval mistyped data", ["eval", "--data", "{dir}/subject_number.jsonl", "--limit", "1"], "subject must be a string"),
    ("eval bad key function", ["eval", "--data", "{dir}/garbage.json", "--key-function", "max"], "--key-function"),
    ("init model not a gguf", ["--registry", "{fresh}", "init", "--model", "{dir}/garbage.json"], "model not found"),
    *numeric(["eval", "--data", "{dir}/garbage.json"], "--limit", ["0", "-1", HUGE, "abc"]),
    *numeric(["eval", "--data", "{dir}/garbage.json"], "--threshold", ["nan", "inf", "0", "3"]),
    *numeric(["eval", "--data", "{dir}/garbage.json"], "--radius-ratio", ["nan", "-1"]),
    *numeric(["eval", "--data", "{dir}/garbage.json"], "--seed", ["-1", HUGE]),
    *numeric(["eval", "--data", "{dir}/garbage.json"], "--every", ["-1", HUGE]),
    *numeric(["eval", "--data", "{dir}/garbage.json"], "--lr", ["nan", "inf", "0"]),
    *numeric(["serve"], "--port", ["-1", "70000", "abc"]),
    *numeric(["serve"], "--max-batch", ["0", HUGE]),
]


class Cli:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.runner = CliRunner()

    def run(self, *args: str):
        return self.runner.invoke(main, ["--registry", str(self.root), *args], catch_exceptions=True)

    def ok(self, *args: str):
        result = self.run(*args)
        assert result.exit_code == 0, result.output
        return result


def state(root: Path) -> tuple[str, dict[str, list[tuple]], list[str]]:
    """What a failing command must not change: `log --json` of every branch, every table (read
    through a raw read-only connection) and every file outside the derived cache/."""
    cli = Cli(root)
    log = "".join(cli.ok("log", "--json", "--rev", ref).stdout for ref in ("main", "side", "guarded"))
    connection = duckdb.connect(str(root / "registry.duckdb"), read_only=True)
    try:
        tables = [r[0] for r in connection.execute("SELECT table_name FROM information_schema.tables ORDER BY 1").fetchall()]
        dump = {t: connection.execute(f'SELECT * FROM "{t}" ORDER BY ALL').fetchall() for t in tables}
    finally:
        connection.close()
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.relative_to(root).parts[0] != "cache")
    return log, dump, files


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """A registry with active, revoked, off-branch and object-less edits, a tag, a side branch
    and a protected branch; the files the cases read; its state before any case ran."""
    base = tmp_path_factory.mktemp("fuzz")
    root = base / "registry"
    registry = new_registry(root)
    e1 = add_edit(registry, P, "Rome", seed=1)
    add_edit(registry, "Toko Yasuda plays the", "piano", seed=2)
    revoked = add_edit(registry, "Apple was founded by", "Steve Wozniak", seed=3)
    lost = add_edit(registry, "The Eiffel Tower is in", "Rome", seed=4)
    registry.set_active(revoked, False, "tester", "wrong")
    registry.tag("v1", registry.head(), "tester")
    registry.create_branch("side", registry.head(), "tester")
    side_edit = add_edit(registry, "Danielle Darrieux's mother tongue is", "English", seed=5, branch="side")
    registry.create_branch("guarded", registry.head(), "tester")
    registry.protect("guarded", 1, "tester")
    tensors = registry.edit_row(lost)["tensors_sha256"]
    registry.close()
    (root / "objects" / tensors[:2] / tensors[2:]).unlink()  # an edit whose tensors are gone
    files = base / "files"
    files.mkdir()
    for name, text in FILES.items():
        (files / name).write_bytes(text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass"))
    pickle_dir = base / "pickled"
    pickle_dir.mkdir()
    (pickle_dir / "config.json").write_text("{}")
    (pickle_dir / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
    places = {"e1": e1, "revoked": revoked, "lost": lost, "side_edit": side_edit, "dir": str(files), "missing": str(base / "missing"),
              "pickle_dir": str(pickle_dir)}
    return {"root": root, "base": base, "places": places, "before": state(root)}


def expand(argument: str, places: dict[str, str], fresh: Path) -> str:
    return argument.replace("{fresh}", str(fresh)).format(**places) if "{" in argument else argument


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_error_line_and_changes_nothing(world, case, monkeypatch):
    monkeypatch.delenv("SOLA_DEBUG", raising=False)
    monkeypatch.delenv("SOLA_WITNESS", raising=False)
    name, arguments, expected = case
    fresh = world["base"] / f"fresh-{CASES.index(case)}"
    args = [expand(a, world["places"], fresh) for a in arguments]
    result = Cli(world["root"]).run(*args)
    assert result.exit_code != 0, (name, result.output)
    assert isinstance(result.exception, SystemExit), (name, repr(result.exception))  # nothing escaped the contract
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), (name, result.stderr[-2000:])
    assert "Traceback" not in result.output and "internal error" not in lines[0], (name, lines[0])
    assert len(lines[0]) < 400, (name, "an argument was echoed whole")
    if expected is not None:
        assert expected in lines[0], (name, lines[0])
    assert not any(not math.isfinite(v) for v in _floats(result.stdout)), name
    assert not fresh.exists(), (name, "a refused init created its directory")
    assert state(world["root"]) == world["before"], (name, "the registry changed")


def _floats(text: str) -> list[float]:
    """Every number in a JSON document on stdout (none is expected from a failure)."""
    try:
        document = json.loads(text) if text.strip() else None
    except ValueError:
        return []
    found: list[float] = []

    def walk(value: object) -> None:
        if isinstance(value, float):
            found.append(value)
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    walk(document)
    return found


def test_the_table_covers_every_command():
    covered = {c[1][2] if c[1][:1] == ["--registry"] else c[1][0] for c in CASES}
    from sola.cli import main as group

    assert set(group.commands) - covered == set(), "commands without a bad-input case"
    assert len(CASES) >= 300


# --- limits a loaded model decides (the tiny Llama: a 128-token context) ------------------------

MODEL_CASES: list[tuple[str, list[str], str]] = [
    ("generate prompt over the context", ["generate", "word " * 200], "over the model's context of 128 tokens"),
    ("generate tokens over the context", ["generate", P, "--max-new-tokens", "125"], "over the model's context"),
    ("edit prompt over the context", ["edit", "--prompt", "word " * 200, "--target", "Rome"], "over the model's context"),
    ("edit rephrase over the context", ["edit", "--prompt", P, "--target", "Rome", "--rephrase", "word " * 200], "over the model's context"),
    ("edit file line over the context", ["edit", "--file", "{long_file}"], "request 2: prompt with its target"),
    ("blame prompt over the context", ["blame", "word " * 200], "over the model's context"),
    ("init no such module", ["--registry", "{fresh}", "init", "--model", "{model}", "--module", "no.such.module"], "has no module"),
    ("init not a projection", ["--registry", "{fresh}", "init", "--model", "{model}", "--module", "mlp.act_fn"], "cannot edit"),
    ("init layer out of range", ["--registry", "{fresh}", "init", "--model", "{model}", "--layer", "99"], "out of range"),
]


@pytest.fixture(scope="module")
def model_world(tmp_path_factory: pytest.TempPathFactory, tiny_dirs: dict[str, Path]) -> dict[str, object]:
    base = tmp_path_factory.mktemp("fuzz-model")
    root = base / "registry"
    cli = Cli(root)
    cli.ok("init", "--model", str(tiny_dirs["llama"]), "--threshold", "0.001")
    cli.ok("edit", "--prompt", P, "--target", "Madrid", "--steps", "5")
    long_file = base / "long.jsonl"
    long_file.write_text(_jsonl([{"prompt": "Toko Yasuda plays the", "target_new": "piano"},
                                 {"prompt": "word " * 200, "target_new": "Rome"}]))
    return {"root": root, "base": base, "places": {"model": str(tiny_dirs["llama"]), "long_file": str(long_file)},
            "before": state_without_branches(root)}


def state_without_branches(root: Path) -> tuple[str, dict[str, list[tuple]], list[str]]:
    connection = duckdb.connect(str(root / "registry.duckdb"), read_only=True)
    try:
        tables = [r[0] for r in connection.execute("SELECT table_name FROM information_schema.tables ORDER BY 1").fetchall()]
        dump = {t: connection.execute(f'SELECT * FROM "{t}" ORDER BY ALL').fetchall() for t in tables}
    finally:
        connection.close()
    log = Cli(root).ok("log", "--json").stdout
    return log, dump, sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.relative_to(root).parts[0] != "cache")


@pytest.mark.parametrize("case", MODEL_CASES, ids=[c[0] for c in MODEL_CASES])
def test_limits_of_the_loaded_model(model_world, case, monkeypatch):
    monkeypatch.delenv("SOLA_DEBUG", raising=False)
    name, arguments, expected = case
    fresh = model_world["base"] / f"fresh-{MODEL_CASES.index(case)}"
    args = [expand(a, model_world["places"], fresh) for a in arguments]
    result = Cli(model_world["root"]).run(*args)
    assert result.exit_code != 0 and isinstance(result.exception, SystemExit), (name, result.output)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "internal error" not in lines[0], (name, result.stderr[-2000:])
    if expected is not None:
        assert expected in lines[0], (name, lines[0])
    assert not fresh.exists(), name
    assert state_without_branches(model_world["root"]) == model_world["before"], (name, "the registry changed")
