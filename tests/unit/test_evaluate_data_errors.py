"""A user's own data files for ``recstream evaluate``: each unreadable file (a missing file,
no header, a missing column or field, a bad value, bad JSON, the items file too) ends with one
sentence on stderr naming the file, the line and the field, and exit status 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from recstream.ranking.evaluate.cli import main
from recstream.ranking.evaluate.data import EVENT_TYPES, DataError, load_interactions, load_items
from recstream.streams.schemas import EVENT_TYPES as WIRE_EVENT_TYPES

GOOD_CSV = "user,item,timestamp\nu1,i1,1700000000\nu1,i2,1700000060\nu2,i1,1700000120\n"

# (file name, contents, what the sentence must name after the file: line, field, problem)
BAD_EVENTS = [
    ("ev.csv", "user,item,timestamp\nu1,i1,1700000000\nu1,i2,oops\n",
     ["line 3", "field 'timestamp'", "'oops' is not a number"]),
    ("ev.csv", "u1,i1,1700000000\nu1,i2,1700000060\n", ["line 1", "no header"]),
    ("ev.csv", "user,item\nu1,i1\n", ["line 1", "user, item and timestamp"]),
    ("ev.csv", "user,item,timestamp\nu1,i1\n", ["line 2", "field 'timestamp'", "missing"]),
    ("ev.csv", "user,item,timestamp\n,i1,1700000000\n", ["line 2", "field 'user'", "empty"]),
    ("ev.csv", "user,item,timestamp\nu1,i1,1700000000,x\n", ["line 2", "4 fields", "names 3"]),
    ("ev.csv", "user,item,timestamp\nu1,i1,nan\n", ["line 2", "field 'timestamp'", "finite"]),
    ("ev.csv", "user,item,timestamp,type\nu1,i1,1700000000,buy\n",
     ["line 2", "field 'type'", "'buy' is not an event type"]),
    ("ev.csv", "user,item,timestamp,rating\nu1,i1,1700000000,5\nu1,i2,1700000001,five\n",
     ["line 3", "field 'rating'", "'five' is not a number"]),
    ("ev.csv", "user,,timestamp\nu1,i1,1700000000\n", ["line 1", "column 2", "no name"]),
    ("ev.csv", "", ["empty file"]),
    ("ev.csv", "user,item,timestamp\n", ["no interactions"]),
    ("ev.csv", "user,item,timestamp\nu1,caf\xe9,1700000000\n", ["line 2", "not UTF-8"]),
    ("ev.jsonl", '{"user_id": "a", "item_id": "x", "ts": 1}\n{"user_id": "a", "item_id": \n',
     ["line 2", "not valid JSON"]),
    ("ev.jsonl", '{"user_id": "a", "item_id": "x", "ts": 1}\n\n[1, 2]\n',
     ["line 3", "not an object"]),
    ("ev.jsonl", '{"user_id": "a", "ts": 1700000000}\n', ["line 1", "field 'item_id'", "missing"]),
    ("ev.jsonl", '{"user_id": "a", "item_id": "x"}\n', ["line 1", "field 'ts'", "missing"]),
    ("ev.jsonl", '{"user": "a", "item": "x", "timestamp": "soon"}\n',
     ["line 1", "field 'timestamp'", "'soon' is not a number"]),
    ("ev.jsonl", '{"user_id": ["a"], "item_id": "x", "ts": 1}\n',
     ["line 1", "field 'user_id'", "a list, not a string"]),
    ("ev.jsonl", '{"user_id": "a", "item_id": "x", "ts": 1, "value": true}\n',
     ["line 1", "field 'value'", "not a number"]),
]  # fmt: skip


def _write(path: Path, text: str) -> Path:
    path.write_bytes(text.encode("latin-1" if "\xe9" in text else "utf-8"))
    return path


def _fails(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main([*argv, "--no-text", "--quiet", "--models", "popularity"]) == 2
    out = capsys.readouterr()
    assert "Traceback" not in out.err
    lines = out.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("recstream evaluate: "), out.err
    return lines[0]


@pytest.mark.parametrize(("name", "text", "names"), BAD_EVENTS)
def test_a_bad_events_file_is_one_sentence_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, text: str, names: list[str]
) -> None:
    path = _write(tmp_path / name, text)
    msg = _fails(["--data", str(path)], capsys)
    assert str(path) in msg
    for part in names:
        assert part in msg, (part, msg)
    with pytest.raises(DataError):  # the loader's own error, for callers of the library
        load_interactions(path)


BAD_ITEMS = [
    ("items.csv", "item_id,title,tags\ni1,A,x\ni2,B,y,extra\n", ["line 3", "4 fields"]),
    ("items.csv", "item_id,title\n,A\n", ["line 2", "field 'item_id'", "empty"]),
    ("items.jsonl", '{"item_id": "i1", "title": "A"}\n{"item_id": "i2",\n',
     ["line 2", "not valid JSON"]),
    ("items.jsonl", '{"title": "A"}\n', ["line 1", "field 'item_id'", "missing"]),
    ("items.jsonl", '{"item_id": "i1", "tags": 3}\n', ["line 1", "field 'tags'"]),
    ("items.jsonl", '{"item_id": "i1", "title": 3}\n', ["line 1", "field 'title'"]),
]  # fmt: skip


@pytest.mark.parametrize(("name", "text", "names"), BAD_ITEMS)
def test_a_bad_items_file_is_one_sentence_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, text: str, names: list[str]
) -> None:
    events = _write(tmp_path / "ev.csv", GOOD_CSV)
    items = _write(tmp_path / name, text)
    msg = _fails(["--data", str(events), "--items", str(items)], capsys)
    assert str(items) in msg
    for part in names:
        assert part in msg, (part, msg)
    with pytest.raises(DataError):
        load_items(items)


def test_missing_files_are_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nowhere.csv"
    msg = _fails(["--data", str(missing)], capsys)
    assert f"{missing}: no such file" in msg and "ml-100k" in msg  # names the datasets too
    events = _write(tmp_path / "ev.csv", GOOD_CSV)
    msg = _fails(["--data", str(events), "--items", str(missing)], capsys)
    assert f"{missing}: no such file" in msg
    msg = _fails(["--data", str(tmp_path)], capsys)
    assert f"{tmp_path}: is a directory" in msg


def test_models_the_protocol_cannot_run_are_one_sentence(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    events = str(_write(tmp_path / "ev.csv", GOOD_CSV))
    assert main(["--data", events, "--models", "popularity,ease", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("recstream evaluate: ease ") and "--protocol split" in err
    assert main(["--data", events, "--models", "popularity,wizard", "--quiet"]) == 2
    assert "unknown model 'wizard'" in capsys.readouterr().err
    assert main(["--data", "ml-100k", "--items", events, "--quiet"]) == 2
    assert "--items is for a --data file" in capsys.readouterr().err


def test_good_files_still_load(tmp_path: Path) -> None:
    """The checks do not refuse what loaded before: blank lines, a BOM, JSON numbers as ids,
    ratings, optional columns left empty."""
    rows = ["\ufeffuser,item,timestamp,type,value", "u1,i1,1700000000,,", "",
            "u1,i2,1700000060,like,", "u2,i1,1700000120,view,0.5"]  # fmt: skip
    ev = _write(tmp_path / "ev.csv", "\n".join(rows) + "\n")
    d = load_interactions(ev)
    assert len(d) == 3 and d.etype == ["view", "like", "view"] and d.value[2] == 0.5
    js = _write(tmp_path / "ev.jsonl", '{"user": 7, "item": 3, "timestamp": 1700000000}\n\n'
                '{"user_id": "7", "item_id": "4", "ts": 1700000001, "rating": 4}\n')  # fmt: skip
    d = load_interactions(js)
    assert d.user_ids == ["7"] and d.item_ids == ["3", "4"] and d.value[1] == pytest.approx(0.8)


def test_event_types_are_the_wire_contracts() -> None:
    assert EVENT_TYPES == WIRE_EVENT_TYPES
