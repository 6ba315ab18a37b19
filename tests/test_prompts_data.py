"""The prompts data source: files and the embedded default read no images, bad input fails in one line."""
import json

import pytest
import torch

from fewstep.distill.config import ConfigError, DataConfig, from_dict
from fewstep.distill.data import build_dataset, collate, has_images
from fewstep.distill.data.procedural import ProceduralDataset, all_captions, labels_from_caption
from fewstep.distill.data.prompts import PROCEDURAL_PROMPTS, ProceduralPromptDataset, PromptDataset


def _prompts(tmp_path, name: str, text: str, **kw) -> torch.utils.data.Dataset:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return build_dataset(DataConfig(source="prompts", path=str(path), **kw))


def _error(tmp_path, name: str, text: str | bytes, **kw) -> str:
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(ConfigError) as e:
        build_dataset(DataConfig(source="prompts", path=str(path), **kw))
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg
    return msg


def test_config_accepts_prompts_source_and_rejects_unknown():
    cfg = from_dict(DataConfig, {"source": "prompts", "path": "p.txt", "caption_column": "prompt"}, "data")
    assert cfg.source == "prompts" and not has_images(cfg) and has_images(DataConfig())
    with pytest.raises(ConfigError, match="data.source"):
        from_dict(DataConfig, {"source": "prompt"}, "data")


def test_txt_one_prompt_a_line_skipping_blanks_and_comments(tmp_path):
    ds = _prompts(tmp_path, "p.txt", "# a list\n a red circle \n\n   \n#skip\nblue square, two\n  # indented comment\nc")
    assert isinstance(ds, PromptDataset) and len(ds) == 3
    assert [ds[i] for i in range(3)] == [{"caption": "a red circle"}, {"caption": "blue square, two"},
                                         {"caption": "c"}]


def test_jsonl_caption_column_default_and_custom(tmp_path):
    rows = [{"text": "one", "prompt": "uno"}, {"text": "two", "prompt": "dos", "extra": 1}]
    body = "\n".join(json.dumps(r) for r in rows[:1]) + "\n\n" + json.dumps(rows[1]) + "\n"
    assert [it["caption"] for it in _prompts(tmp_path, "a.jsonl", body)] == ["one", "two"]
    ds = _prompts(tmp_path, "b.JSONL", body, caption_column="prompt")
    assert [ds[i] for i in range(len(ds))] == [{"caption": "uno"}, {"caption": "dos"}]


def test_procedural_default_has_procedural_captions_and_labels_but_no_image():
    ds = build_dataset(DataConfig(source="prompts", seed=5))
    assert isinstance(ds, ProceduralPromptDataset) and len(ds) == PROCEDURAL_PROMPTS
    ref = ProceduralDataset(5)
    for i in (0, 1, 2, 17, 999, PROCEDURAL_PROMPTS - 1):
        item, want = ds[i], ref[i]
        assert set(item) == {"caption", "labels"}
        assert item["caption"] == want["caption"] and torch.equal(item["labels"], want["labels"])
        assert labels_from_caption(item["caption"]) == item["labels"].tolist()
    # the seed selects the split, and the validation override works as for "procedural"
    assert [ds[i]["caption"] for i in range(8)] != [ProceduralPromptDataset(6)[i]["caption"] for i in range(8)]
    val = build_dataset(DataConfig(source="prompts", seed=5), seed=1234)
    assert val[3]["caption"] == ProceduralDataset(1234)[3]["caption"]
    with pytest.raises(IndexError):
        ds[PROCEDURAL_PROMPTS]


def test_order_is_deterministic(tmp_path):
    text = "\n".join(f"prompt {i}" for i in range(50))
    a, b = _prompts(tmp_path, "a.txt", text), _prompts(tmp_path, "b.txt", text)
    assert [a[i]["caption"] for i in range(50)] == [b[i]["caption"] for i in range(50)] == text.splitlines()
    c, d = ProceduralPromptDataset(3), ProceduralPromptDataset(3)
    assert [c[i]["caption"] for i in range(30)] == [d[i]["caption"] for i in range(30)]


def test_collate_gives_captions_without_pixels(tmp_path):
    batch = collate([_prompts(tmp_path, "p.txt", "x\ny")[i] for i in range(2)])
    assert batch == {"captions": ["x", "y"]}
    batch = collate([ProceduralPromptDataset(0)[i] for i in range(4)])
    assert set(batch) == {"captions", "labels"} and batch["labels"].shape == (4, 5)
    # image sources still get pixels in [-1, 1]
    img = collate([ProceduralDataset(0)[i] for i in range(2)])
    assert img["pixels"].shape == (2, 3, 32, 32) and -1 <= img["pixels"].min() and img["pixels"].max() <= 1


def test_dataloader_with_the_loops_sampler(tmp_path):
    """The loop reshuffles every source but "procedural" with its StreamSampler and collate."""
    from fewstep.distill.loop import StreamSampler

    for ds in (_prompts(tmp_path, "p.txt", "\n".join(f"p{i}" for i in range(10))), ProceduralPromptDataset(0)):
        def draw(seed: int) -> list[dict]:
            loader = torch.utils.data.DataLoader(ds, batch_size=4, sampler=StreamSampler(len(ds), True, seed),
                                                 collate_fn=collate, drop_last=True,
                                                 generator=torch.Generator().manual_seed(seed))
            it = iter(loader)
            return [next(it) for _ in range(5)]

        first, again = draw(0), draw(0)
        assert all("pixels" not in b and len(b["captions"]) == 4 for b in first)
        assert [b["captions"] for b in first] == [b["captions"] for b in again]
        assert [b["captions"] for b in first] != [b["captions"] for b in draw(1)]
    assert {c for b in first for c in b["captions"]} <= set(all_captions())  # the last ds: procedural prompts


def test_missing_file_and_directory(tmp_path):
    for path in (tmp_path / "nope.txt", tmp_path):
        with pytest.raises(ConfigError) as e:
            build_dataset(DataConfig(source="prompts", path=str(path)))
        msg = str(e.value)
        assert msg.startswith("data.path:") and str(path) in msg and "\n" not in msg


def test_empty_files(tmp_path):
    assert "no prompts" in _error(tmp_path, "e.txt", "")
    assert "no prompts" in _error(tmp_path, "c.txt", "# only a comment\n\n   \n")
    assert "no prompts" in _error(tmp_path, "e.jsonl", "\n\n")


def test_unsupported_extension(tmp_path):
    msg = _error(tmp_path, "p.csv", "a,b\n")
    assert "'.csv'" in msg and ".txt" in msg and ".jsonl" in msg
    assert "'(none)'" in _error(tmp_path, "prompts", "a\n")


def test_bad_jsonl_lines_name_the_line_and_key(tmp_path):
    good = json.dumps({"text": "ok"})
    msg = _error(tmp_path, "a.jsonl", f"{good}\n\n{{not json\n")
    assert ":3:" in msg and "not valid JSON" in msg
    msg = _error(tmp_path, "b.jsonl", f"{good}\n{json.dumps({'prompt': 'x'})}\n")
    assert ":2:" in msg and "'text'" in msg and "data.caption_column" in msg and "'prompt'" in msg
    msg = _error(tmp_path, "c.jsonl", f"{good}\n{good}\n", caption_column="prompt")
    assert ":1:" in msg and "'prompt'" in msg
    assert ":1:" in _error(tmp_path, "d.jsonl", '["text"]\n')
    msg = _error(tmp_path, "e.jsonl", f"{good}\n{json.dumps({'text': 3})}\n")
    assert ":2:" in msg and "string" in msg


def test_not_utf8(tmp_path):
    assert "UTF-8" in _error(tmp_path, "b.txt", b"ok\n\xff\xfe bad\n")


def test_empty_prompt_list_in_code():
    with pytest.raises(ConfigError):
        PromptDataset([])
