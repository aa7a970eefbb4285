"""Every check a job gets before Ray starts, each error checked by its message."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from jobs import JobSpecError, check_job, load_job
from jobs.cli import app
from storage import Provenance, commit, output_schema, vocab
from storage.vocab import resolve_mode

from ..jobfiles import write_job


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "docs.parquet"
    pq.write_table(
        pa.table({"doc_id": ["a", "b"], "body": ["one text", "another"], "score": [1.0, 2.0], "n": [1, 2]}), path
    )
    return path


@pytest.fixture
def job(tmp_path, corpus, tiny_bert_dir):
    def make(granularities=("l2_d32", "l4_d64"), input=None, model=None, output=None, **extra):
        sections = {
            "input": {"uri": str(corpus), "id_column": "doc_id", "text_column": "body", **(input or {})},
            "model": {"path": str(tiny_bert_dir), **(model or {})},
            "output": {"uri": str(tmp_path / "out" / "docs.lance"), **(output or {})},
            **extra,
        }
        return write_job(tmp_path / "job.toml", granularities=list(granularities), **sections)

    return make


def _problems(path) -> list[str]:
    with pytest.raises(JobSpecError) as info:
        check_job(load_job(path), source_name=str(path))
    return info.value.problems


def test_a_valid_job_resolves(job, tiny_bert_dir):
    resolved = check_job(load_job(job(input={"columns": ["score"]})))
    assert [str(g) for g in resolved.granularities] == ["l2_d32", "l4_d64"]
    assert resolved.schema.names == [
        "id",
        "content_hash",
        "score",
        "text",
        "vec_l2_d32",
        "vec_l4_d64",
        "run_id",
        "embedded_at",
    ]
    assert resolved.provenance.model_path == str(tiny_bert_dir.resolve())
    assert resolved.rejects_uri.endswith("docs_rejects.lance")
    assert not resolved.output_exists


def test_unknown_keys_and_bad_values_are_all_reported(tmp_path):
    path = tmp_path / "job.toml"
    path.write_text(
        'granularities = "l2_d32"\n[input]\nuri = "x.parquet"\ntxt_column = "body"\n'
        '[model]\npath = "m"\npooling = "avg"\n[output]\nuri = "o"\nmode = "upsert"\n[cluster]\nactors = 0\n'
    )
    with pytest.raises(JobSpecError) as info:
        load_job(path)
    text = str(info.value)
    assert "unknown key 'input.txt_column'; allowed in [input]: uri, format, id_column, text_column, columns" in text
    assert "model.pooling = 'avg': Input should be 'mean', 'cls', 'max' or 'lasttoken'" in text
    assert "output.mode = 'upsert': Input should be 'create', 'overwrite', 'append', 'incremental' or 'migrate'" in text
    assert "cluster.actors = 0: Input should be greater than or equal to 1" in text


def test_missing_sections_and_bad_toml(tmp_path):
    path = tmp_path / "job.toml"
    path.write_text('granularities = "l2_d32"\n')
    with pytest.raises(JobSpecError, match="missing required key 'input'"):
        load_job(path)
    path.write_text("granularities = [\n")
    with pytest.raises(JobSpecError, match="not valid TOML"):
        load_job(path)
    with pytest.raises(JobSpecError, match="job file does not exist"):
        load_job(tmp_path / "nope.toml")


def test_missing_columns_are_found_from_the_schema(job):
    problems = _problems(job(input={"text_column": "content", "columns": ["title"]}))
    assert any(
        p.startswith("input.text_column = 'content' is not a column of")
        and p.endswith("columns: doc_id, body, score, n")
        for p in problems
    )
    assert any(p.startswith("input.columns: 'title' is not a column of") for p in problems)


def test_column_types_and_reserved_names(job):
    problems = _problems(job(input={"text_column": "n", "id_column": "score", "columns": ["n"]}))
    assert "input.text_column 'n' has type int64; expected a string or binary column" in problems
    assert "input.id_column 'score' has type double; ids must be strings or integers" in problems
    assert any(p.startswith("input.columns: 'n' clashes with an output column") for p in problems)


def test_input_that_matches_nothing(job, tmp_path):
    problems = _problems(job(input={"uri": str(tmp_path / "missing" / "*.parquet")}))
    assert problems == [f"input.uri: input '{tmp_path / 'missing' / '*.parquet'}' matches no parquet files"]


def test_model_and_granularity_errors_name_value_and_range(job, tmp_path):
    assert _problems(job(granularities=["l5_d32"])) == [
        "granularities: granularity l5_d32: layer 5 is out of range; tiny-bert has layers 1..4"
    ]
    assert _problems(job(granularities=[[2, 100]])) == [
        "granularities: granularity l2_d100: dim 100 is out of range; tiny-bert has dims 1..64"
    ]
    missing = tmp_path / "no-model"
    assert _problems(job(model={"path": str(missing)})) == [
        f"model: model '{missing}': directory does not exist (models are loaded from local dirs only)"
    ]
    assert _problems(job(model={"max_length": 4096})) == [
        "model: max_length 4096 is out of range; tiny-bert allows 2..128 tokens"
    ]


def test_the_int8_backend_is_checked_against_the_job(job):
    resolved = check_job(load_job(job(model={"backend": "int8"})))
    assert resolved.provenance.backend == "int8" and resolved.encoder.backend == "int8"
    assert check_job(load_job(job())).provenance.backend == "torch"
    assert _problems(job(model={"backend": "int8"}, cluster={"gpus_per_actor": 1})) == [
        "cluster: gpus_per_actor = 1, but backend 'int8' runs on CPU; leave gpus_per_actor unset (or 0) with it, "
        "or use backend 'torch' on GPUs"
    ]
    assert _problems(job(model={"backend": "int8", "dtype": "bfloat16"})) == [
        "model: backend 'int8' quantizes the float32 weights; dtype 'bfloat16' is not allowed with it "
        "(leave dtype unset or 'float32')"
    ]


def _make_table(resolved_job, granularities=None, fingerprint=None):
    prov = resolved_job.provenance
    if granularities or fingerprint:
        prov = Provenance(
            **{
                **prov.__dict__,
                "granularities": granularities or prov.granularities,
                "weights_fingerprint": fingerprint or prov.weights_fingerprint,
            }
        )
    schema = output_schema(prov, id_type=pa.string())
    commit(resolved_job.output_uri, [], schema=schema, mode="create", read_version=None)


def test_existing_output_in_create_mode_is_refused(job):
    resolved = check_job(load_job(job()))
    _make_table(resolved)
    (problem,) = _problems(job(output={"mode": "create"}))
    assert "already exists and output.mode is 'create'; use mode = 'incremental'" in problem
    assert check_job(load_job(job())).mode == "incremental"  # the default once the table exists
    assert check_job(load_job(job(output={"mode": "overwrite"}))).output_exists
    assert check_job(load_job(job(output={"mode": "append"}))).output_exists


@pytest.mark.parametrize("mode", ["append", "incremental", None])
def test_append_or_incremental_to_a_table_made_by_another_config_is_refused(job, mode):
    resolved = check_job(load_job(job()))
    _make_table(resolved, granularities=("l2_d32",), fingerprint="0123456789abcdef")
    (problem,) = _problems(job(output={"mode": mode} if mode else {}))
    verb = "append to it" if mode == "append" else "update it incrementally"
    assert "was made with another config (" in problem and f"so the run cannot {verb} without mixing" in problem
    assert f"weights_fingerprint: 0123456789abcdef -> {resolved.provenance.weights_fingerprint}" in problem
    assert "granularities: l2_d32 -> l2_d32,l4_d64" in problem
    assert "use mode = 'overwrite' (one new version, old ones stay readable) or a new output.uri" in problem


def test_a_migration_is_checked_before_ray(job, tmp_path):
    """mode = "migrate" on a table of other settings: the old model must still be there, the rows stay the same
    rows; with the table's own settings it is an incremental night; a bad budget is named."""
    resolved = check_job(load_job(job()))
    _make_table(resolved, granularities=("l2_d32",), fingerprint="0123456789abcdef")
    (problem,) = _problems(job(output={"mode": "migrate"}))  # the fake table's "model" has other weights
    assert "the table's model" in problem and "has other weights now" in problem and "0123456789abcdef" in problem
    with pytest.raises(JobSpecError) as info:
        load_job(job(migrate={"budget": "2x"}))
    assert info.value.problems == [
        "migrate.budget = '2x': '2x' is not a duration: expected a number and a unit (s, m, h, d, w), e.g. 2h"
    ]
    with pytest.raises(JobSpecError, match=r"migrate.max_rows_per_run = 0: Input should be greater than or equal"):
        load_job(job(migrate={"max_rows_per_run": 0}))


def test_a_migrate_job_on_its_own_table_is_an_incremental_night(job):
    resolved = check_job(load_job(job()))
    _make_table(resolved)
    again = check_job(load_job(job(output={"mode": "migrate"})))
    assert again.migration is None and again.mode == "incremental"


def test_validate_command(job):
    runner = CliRunner()
    ok = runner.invoke(app, ["validate", str(job())])
    assert ok.exit_code == 0, ok.output
    assert "valid" in ok.output and "l2_d32, l4_d64" in ok.output
    bad = runner.invoke(app, ["validate", str(job(granularities=["l9_d8"]))])
    assert bad.exit_code == 2
    assert "layer 9 is out of range" in bad.output


def test_a_union_type_error_is_reported_once(tmp_path):
    path = tmp_path / "job.toml"
    path.write_text('granularities = 5\n[input]\nuri = "x.parquet"\n[model]\npath = "m"\n[output]\nuri = "o"\n')
    with pytest.raises(JobSpecError) as info:
        load_job(path)
    assert info.value.problems == ["granularities = 5: Input should be a valid string, or input should be a valid list"]


@pytest.mark.parametrize(
    ("section", "key", "names"),
    [
        ("input", "format", vocab.INPUT_FORMATS),
        ("model", "pooling", vocab.POOLINGS),
        ("model", "dtype", vocab.MODEL_DTYPES),
        ("model", "backend", vocab.BACKENDS),
        ("output", "vector_dtype", vocab.VECTOR_DTYPE_NAMES),
        ("output", "mode", vocab.OUTPUT_MODES),
        ("cluster", "tokenize", vocab.TOKENIZE_CHOICES),
        ("index", "type", vocab.INDEX_TYPES),
    ],
)
def test_the_spec_allows_the_vocabularys_names(job, section, key, names):
    extra = {"index": {"granularities": "all"}} if section == "index" else {}
    for name in names:  # each one parses
        load_job(job(**{**extra, section: {**extra.get(section, {}), key: name}}))
    with pytest.raises(JobSpecError) as info:
        load_job(job(**{**extra, section: {**extra.get(section, {}), key: "nope"}}))
    allowed = ", ".join(repr(n) for n in names[:-1]) + f" or {names[-1]!r}"
    assert info.value.problems == [f"{section}.{key} = 'nope': Input should be {allowed}"]


@pytest.mark.parametrize("mode", [None, "create", "overwrite", "append", "incremental", "migrate"])
def test_the_resolved_mode_on_a_new_table(job, mode):
    resolved = check_job(load_job(job(output={"mode": mode} if mode else {})))
    assert resolved.mode == resolve_mode(mode, table_exists=False)
    assert resolved.mode == ("overwrite" if mode == "overwrite" else "create")


def test_a_specs_relative_paths_are_taken_from_the_working_directory(tmp_path, corpus, tiny_bert_dir, monkeypatch):
    """A job built in Python (``parse_job``) names paths relative to where it runs, as a job file's are relative
    to its folder; the checks make them absolute, so Ray's workers (which keep the working directory Ray started
    in) read and write the same files the checks saw."""
    from jobs import parse_job

    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "tiny").symlink_to(tiny_bert_dir)
    spec = parse_job(
        {
            "granularities": ["l2_d32"],
            "input": {"uri": corpus.name, "id_column": "doc_id", "text_column": "body"},
            "model": {"path": "./models/tiny"},
            "output": {"uri": "out/docs"},
        }
    )
    resolved = check_job(spec)
    assert resolved.spec.input.uri == str(tmp_path / "docs.parquet")
    assert resolved.spec.output.uri == resolved.output_uri == str(tmp_path / "out" / "docs.lance")
    assert resolved.spec.model.path == str(tmp_path / "models" / "tiny")
    # a model's name is not a path
    named = check_job(parse_job({**spec.model_dump(), "model": {"path": "all-MiniLM-L6-v2"}}))
    assert named.spec.model.path == "all-MiniLM-L6-v2"


def test_overrides_apply_to_a_spec_as_to_a_job_file(job):
    from jobs._lifecycle import checked_job

    path = job()
    spec = load_job(path)
    overrides = {"output.mode": "overwrite", "chunking.tokens": 32, "cluster.actors": 1}
    from_file, _ = checked_job(path, overrides)
    from_spec, _ = checked_job(spec, overrides)
    assert from_spec.spec == from_file.spec
    assert (from_spec.spec.output.mode, from_spec.spec.chunking.tokens, from_spec.spec.cluster.actors) == (
        "overwrite",
        32,
        1,
    )
    with pytest.raises(JobSpecError, match=r"output.mode = 'sideways'"):
        checked_job(spec, {"output.mode": "sideways"})
