"""The ``[gate]`` section and its probe file, checked before Ray starts (each error by its message)."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs import JobSpecError, check_job, load_job

from ..jobfiles import write_job


@pytest.fixture
def job(tmp_path, tiny_bert_dir):
    corpus = tmp_path / "docs.parquet"
    pq.write_table(pa.table({"doc_id": ["a", "b"], "body": ["one text", "another"]}), corpus)

    def make(gate: dict):
        return write_job(
            tmp_path / "job.toml",
            granularities=["l2_d32", "l4_d64"],
            input={"uri": str(corpus), "id_column": "doc_id", "text_column": "body"},
            model={"path": str(tiny_bert_dir)},
            output={"uri": str(tmp_path / "out" / "docs.lance")},
            gate=gate,
        )

    return make


def _problems(path) -> list[str]:
    with pytest.raises(JobSpecError) as info:
        check_job(load_job(path), source_name=str(path))
    return info.value.problems


def test_a_gate_with_a_probe_file_next_to_the_job_resolves(job, tmp_path):
    (tmp_path / "probes.jsonl").write_text('{"query": "one", "expected": ["a"]}\n\n{"query": "two", "expected": [7]}\n')
    resolved = check_job(load_job(job({"probes": "probes.jsonl", "floor": 0.5, "granularity": "l2_d32"})))
    gate = resolved.spec.gate
    assert (gate.probes, gate.floor, gate.k, gate.metric) == (str(tmp_path / "probes.jsonl"), 0.5, 10, "recall")


def test_bad_gate_values_are_named(job, tmp_path):
    with pytest.raises(JobSpecError) as info:
        load_job(job({"probes": "p.jsonl", "floor": 1.5, "k": 0, "metric": "ndcg", "seed": 1}))
    text = str(info.value)
    assert "gate.floor = 1.5: Input should be less than or equal to 1" in text
    assert "gate.k = 0: Input should be greater than or equal to 1" in text
    assert "gate.metric = 'ndcg': Input should be 'recall'" in text
    assert "unknown key 'gate.seed'; allowed in [gate]: probes, floor, k, metric, granularity" in text
    with pytest.raises(JobSpecError, match="missing required key 'gate.floor'"):
        load_job(job({"probes": "p.jsonl"}))


def test_a_missing_probe_file_or_a_bad_line_is_a_problem_naming_it(job, tmp_path):
    probes = tmp_path / "probes.jsonl"
    assert _problems(job({"probes": "probes.jsonl", "floor": 0.5})) == [
        f"gate.probes = {str(probes)!r}: the file does not exist"
    ]
    lines = [
        json.dumps({"query": "one", "expected": ["a"]}),
        json.dumps({"query": "two", "expected": []}),
    ]
    probes.write_text("\n".join(lines) + "\n")
    assert _problems(job({"probes": "probes.jsonl", "floor": 0.5})) == [
        f'gate.probes = {str(probes)!r}, line 2: "expected" must be a non-empty list of ids (strings or integers), '
        "got []"
    ]
    for bad, why in [
        ("{not json", "not JSON (Expecting property name enclosed in double quotes)"),
        (
            '{"query": "q", "ids": ["a"]}',
            "must be an object with exactly \"query\" and \"expected\", got ['ids', 'query']",
        ),
        ('{"query": "", "expected": ["a"]}', "\"query\" must be a non-empty string, got ''"),
    ]:
        probes.write_text(lines[0] + "\n" + bad + "\n")
        assert _problems(job({"probes": "probes.jsonl", "floor": 0.5})) == [
            f"gate.probes = {str(probes)!r}, line 2: {why}"
        ]
    probes.write_text("\n\n")
    assert _problems(job({"probes": "probes.jsonl", "floor": 0.5})) == [
        f"gate.probes = {str(probes)!r}: the file holds no probe"
    ]


def test_the_gates_granularity_is_one_of_the_jobs(job, tmp_path):
    (tmp_path / "probes.jsonl").write_text('{"query": "one", "expected": ["a"]}\n')
    assert _problems(job({"probes": "probes.jsonl", "floor": 0.5, "granularity": "l3_d16"})) == [
        "gate.granularity = 'l3_d16' is not one of the job's granularities: l2_d32, l4_d64"
    ]


def test_probes_previous_takes_no_file_and_measures_overlap(job, tmp_path):
    resolved = check_job(load_job(job({"probes": "previous", "floor": 0.7, "sample": 50})))
    assert (resolved.spec.gate.probes, resolved.spec.gate.metric) == ("previous", "overlap")
    with pytest.raises(
        JobSpecError, match="metric 'recall' does not fit probes = 'previous', which measures 'overlap'"
    ):
        load_job(job({"probes": "previous", "floor": 0.7, "metric": "recall"}))


def test_agreement_with_the_previous_good_version(tmp_path, tiny_bert_dir):
    """Real tables, no Ray: a version embedded as latest-good was agrees fully (overlap@5 = 1); one whose texts
    mostly changed does not; a table with no latest-good has nothing to compare and passes."""
    from bench.corpora import passages
    from jobs._gate import evaluate_gate, gate_line
    from jobs._spec import GateSpec
    from storage import move_latest_good

    from ..jobfiles import write_embedded_table

    texts = passages(40, words=30)
    uri = str(tmp_path / "t.lance")
    gate = GateSpec(probes="previous", floor=0.8, k=5, sample=20)
    assert write_embedded_table(uri, tiny_bert_dir, texts, granularities=("l2_d32",)) == 1
    first = evaluate_gate(gate, uri, 1)
    assert (first["value"], first["passed"], first["probes"]) == (None, True, 0)
    assert gate_line(first) == "quality gate: overlap@5: no previous good version to compare with (passed)"
    move_latest_good(uri, 1)

    same = write_embedded_table(uri, tiny_bert_dir, texts, granularities=("l2_d32",), mode="overwrite", read_version=1)
    agreed = evaluate_gate(gate, uri, same)
    assert (agreed["value"], agreed["passed"], agreed["probes"], agreed["metric"]) == (1.0, True, 20, "overlap@5")

    shuffled = texts[1:] + texts[:1]  # every id now holds another row's text
    worse = write_embedded_table(
        uri, tiny_bert_dir, shuffled, granularities=("l2_d32",), mode="overwrite", read_version=same
    )
    refused = evaluate_gate(gate, uri, worse)
    assert refused["value"] < 0.5 and refused["passed"] is False, refused
    assert gate_line(refused).startswith(f"quality gate: overlap@5 {refused['value']:.2f} < floor 0.80 (l2_d32, 20 ")
