from __future__ import annotations

import numpy as np

from rcmed.data.nuclei import is_test_tile, nuclei_tiles


def test_tiles_relabel_split_by_tile_and_skip_empty_tiles():
    image = np.arange(256 * 256, dtype=np.uint16).reshape(256, 256)
    labels = np.zeros((256, 256), np.int32)
    labels[10:20, 10:20] = 7          # tile (0, 0): test
    labels[10:20, 200:210] = 9        # tile (0, 1): train
    labels[120:136, 60:70] = 3        # crosses the border between tiles (0, 0) and (1, 0)
    tiles = list(nuclei_tiles(image, labels, tile=128))
    ids = {s.record.case_id: (s, split) for s, split in tiles}
    assert len(tiles) == 3  # tile (1, 1) holds no nucleus and is skipped
    s00, split00 = ids["dsb2018-stardist-r0c0"]
    assert split00 == "test" and is_test_tile(0, 0) and not is_test_tile(0, 1)
    assert s00.instances.max() == 2 and set(np.unique(s00.instances)) == {0, 1, 2}  # relabelled 1..N
    assert np.array_equal(s00.image, image[:128, :128])
    s10, _ = ids["dsb2018-stardist-r1c0"]
    assert s10.instances.max() == 1 and (s10.instances > 0).sum() == 8 * 10  # the cut nucleus' lower part
    for s, _ in tiles:
        s.validate()
        assert s.record.instance_target == "nuclei" and s.record.modality == "microscopy" and not s.record.absent
