"""Image folders with metadata.jsonl: items, and one clear line for each broken listing."""
import numpy as np
import pytest
from PIL import Image

from fewstep.distill.config import ConfigError
from fewstep.distill.data.imagefolder import ImageFolderDataset


def folder(tmp_path, lines: list[str]):
    for name in ("a.png", "b.png"):
        Image.fromarray(np.full((40, 48, 3), 200, np.uint8)).save(tmp_path / name)
    (tmp_path / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return tmp_path


def test_items_are_resized_centre_cropped_captioned_images(tmp_path):
    ds = ImageFolderDataset(folder(tmp_path, ['{"file_name": "a.png", "text": "red"}', "",
                                              '{"file_name": "b.png", "text": "blue"}']), resolution=32)
    assert len(ds) == 2
    item = ds[1]
    assert item["caption"] == "blue" and tuple(item["image"].shape)[-2:] == (32, 32)


@pytest.mark.parametrize("line, needle", [
    ('{"file_name": "a.png"', "metadata.jsonl:2: not valid JSON"),
    ('{"file_name": "a.png", "caption": "x"}', "metadata.jsonl:2: needs keys"),
    ('["a.png", "x"]', "metadata.jsonl:2: needs keys"),
    ('{"file_name": "zzz.png", "text": "x"}', "zzz.png does not exist"),
])
def test_broken_listing_names_file_and_line(tmp_path, line, needle):
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.").replace("[", r"\[")):
        ImageFolderDataset(folder(tmp_path, ['{"file_name": "a.png", "text": "ok"}', line]), resolution=32)
