"""NIH ChestX-ray14: 112,120 frontal chest X-rays with 14 text-mined findings (multi-label), official
train/validation-pool and test lists. Manual download; `data_dir` holds the CSV, the two lists and the images
(anywhere below it, e.g. the `images/` folders the archives unpack to).

Columns: `image`, `labels` (the findings; "No Finding" is the empty list), `patient_id` (NIH's de-identified
number, needed for patient-wise validation splits), `view_position`, `follow_up`.
"""

import csv
from pathlib import Path

import datasets

from ._common import DataFileError, MedicalBuilder, require_file

FINDINGS = [
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia", "Pneumothorax",
    "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia",
]
HOMEPAGE = "https://nihcc.app.box.com/v/ChestXray-NIHCC"
HOW_TO_GET = (
    f"ChestX-ray14 is downloaded by hand from {HOMEPAGE}: get Data_Entry_2017_v2020.csv (or Data_Entry_2017.csv), "
    "train_val_list.txt, test_list.txt and the archives images_001.tar.gz … images_012.tar.gz, unpack the archives "
    "into one folder with the CSV and the lists, and pass that folder as data_dir."
)
CITATION = """@inproceedings{wang2017chestxray,
  title={ChestX-ray8: Hospital-scale Chest X-ray Database and Benchmarks on Weakly-Supervised Classification and Localization of Common Thorax Diseases},
  author={Wang, Xiaosong and Peng, Yifan and Lu, Le and Lu, Zhiyong and Bagheri, Mohammadhadi and Summers, Ronald M},
  booktitle={CVPR}, pages={2097--2106}, year={2017}
}"""


class ChestXray14(MedicalBuilder):
    def _info(self) -> datasets.DatasetInfo:
        return datasets.DatasetInfo(
            description="NIH ChestX-ray14: frontal chest X-rays, 14 findings (multi-label).",
            features=datasets.Features(
                {
                    "image": datasets.Image(mode="L"),
                    "labels": datasets.Sequence(datasets.ClassLabel(names=FINDINGS)),
                    "patient_id": datasets.Value("int32"),
                    "view_position": datasets.Value("string"),
                    "follow_up": datasets.Value("int32"),
                }
            ),
            homepage=HOMEPAGE,
            citation=CITATION,
            license="CC0 1.0 (NIH Clinical Center; cite the paper)",
        )

    def _split_generators(self, dl_manager):
        if not self.config.data_dir:
            raise DataFileError(f"ChestX-ray14 needs data_dir. {HOW_TO_GET}")
        root = Path(self.config.data_dir)
        entries = next((root / n for n in ("Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv") if (root / n).is_file()), None)
        if entries is None:
            raise DataFileError(f"{root}: Data_Entry_2017_v2020.csv (or Data_Entry_2017.csv) not found. {HOW_TO_GET}")
        with open(entries, newline="") as f:
            rows = {row["Image Index"]: row for row in csv.DictReader(f)}
        images = {p.name: p for p in root.rglob("*.png")}
        splits = []
        for split, listing in ((datasets.Split.TRAIN, "train_val_list.txt"), (datasets.Split.TEST, "test_list.txt")):
            names = require_file(root / listing, HOW_TO_GET).read_text().split()
            missing = [n for n in names if n not in images or n not in rows]
            if missing:
                raise DataFileError(
                    f"{root}: {len(missing)} image(s) of {listing} are missing (from the folder or the CSV), e.g. "
                    f"{missing[:5]}. {HOW_TO_GET}"
                )
            splits.append(datasets.SplitGenerator(name=split, gen_kwargs={"names": names, "rows": rows, "images": images}))
        return splits

    def _generate_examples(self, names, rows, images):
        for name in names:
            row = rows[name]
            findings = [f for f in row["Finding Labels"].split("|") if f != "No Finding"]
            unknown = set(findings) - set(FINDINGS)
            if unknown:
                raise DataFileError(f"{name}: unknown finding(s) {sorted(unknown)} in the CSV")
            yield name, {
                "image": str(images[name]),
                "labels": findings,
                "patient_id": int(row["Patient ID"]),
                "view_position": row["View Position"],
                "follow_up": int(row["Follow-up #"]),
            }
