"""Datasets for anomaly localization: one Sample type, three readers, one spec string.

    from fastad.data import open_dataset
    train = open_dataset("builtin:brick", "train")          # or mvtec:<root>/<category>,
    test = open_dataset("builtin:brick", "test")            # folder:normal=DIR,test=DIR[,masks=DIR]
    sample = test[0]   # Sample(image [3, 256, 256] float32, mask [256, 256] bool, label, path, defect)

    fastad.data.export_mvtec("builtin:brick", "out")        # out/brick/train/good/000.png ...

Files that cannot be read are reported (SkippedImageWarning), listed in dataset.skipped as
(path, reason) and left out; the rest loads. The check when a dataset is built reads headers
only: a file that passes it but fails to decode makes dataset[i] raise UnreadableImageError
(naming the path), which batch scoring and training catch per image (report, add to
dataset.skipped, go on).
"""
from fastad.data.builtin import BuiltinDataset
from fastad.data.mvtec_writer import export_mvtec
from fastad.data.folder import FolderDataset
from fastad.data.images import UnreadableImageError, load_image, load_mask
from fastad.data.mvtec import MVTecDataset
from fastad.data.report import SkippedImageWarning, summarize
from fastad.data.sample import Sample
from fastad.data.spec import open_dataset, parse_spec

__all__ = ["BuiltinDataset", "FolderDataset", "MVTecDataset", "Sample", "SkippedImageWarning", "UnreadableImageError",
           "export_mvtec", "load_image", "load_mask", "open_dataset", "parse_spec", "summarize"]
