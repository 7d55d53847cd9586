"""The papers' reference numbers (SPEC §9; stripe-wise pruning: SPEC §5) as data, and which of them a
session's run reproduces.

A paper row applies to a session when every key of its `match` has one of the allowed values in the
session's configuration view (`configuration`), where None stands for "not recorded". Rows ask for the
flags that define them (slr: neither --difflr nor --cos; dlr: both), so a session that did not record its
flags gets no number rather than a wrong one. Numbers are kept as the papers print them (strings).
"""
from dataclasses import dataclass

CIFAR_EPOCHS = 200
IMAGENET_EPOCHS = 90
STRIPE_EPOCHS = 160

# model: (baseline, slr, dlr) on CIFAR-10, then on CIFAR-100; 2 networks.
CIFAR_TABLE = {
    "resnet32": (("92.83", "93.33", "93.94"), ("69.82", "71.16", "71.28")),
    "resnet56": (("93.50", "94.28", "94.73"), ("71.55", "73.09", "72.83")),
    "resnet110": (("93.81", "94.60", "94.96"), ("73.21", "74.70", "75.27")),
    "mobilenetv2": (("92.42", "93.53", "94.20"), ("71.44", "73.26", "74.15")),
}
# MobileNetV2, dlr, N networks: (CIFAR-10, CIFAR-100).
MOBILENET_NETWORKS = {2: ("94.20", "74.15"), 3: ("94.55", "76.21"), 4: ("95.23", "77.08"),
                      6: ("95.33", "78.32"), 8: ("95.20", "77.76")}
MOBILENET_ENSEMBLE = ("94.09", "76.75")  # 6 models; no session evaluates an ensemble, so no row matches it
VGG16_LEVELS = {"baseline": ("93.68", "73.41"), "layer": ("94.02", "74.28"), "filter": ("94.26", "74.63")}
SCION_SOURCES = {"baseline": ("92.42", "71.44"), "noise": ("92.51", "72.34"), "internal": ("92.68", "72.38"),
                 "external": ("92.94", "72.90")}
# model: ((baseline top-1, top-5), (grafting top-1, top-5)).
IMAGENET_TABLE = {"resnet18": (("69.15", "88.87"), ("71.19", "90.01")),
                  "resnet34": (("72.60", "90.91"), ("74.58", "92.05")),
                  "resnet50": (("75.92", "92.81"), ("76.76", "93.34"))}
# (teacher, student): CIFAR-100 baseline, grafting, distillation, grafting+.
GRAFTING_PLUS = {("resnet56", "resnet32"): ("69.87", "70.76", "72.31", "72.69"),
                 ("resnet110", "resnet56"): ("71.87", "72.00", "73.42", "74.28"),
                 ("resnet110", "mobilenetv2"): ("72.4", "73.79", "74.98", "75.55")}
# (model, data, classes, sr or None for any): (params change, FLOPs change, accuracy change), None where the
# paper gives none. ResNet56 as its authors corrected the paper's swapped columns (SPEC §5).
STRIPE_TABLE = {("vgg16", "cifar", 10, None): ("−92.66", "−71.16", "+0.4"),
                ("resnet56", "cifar", 10, None): ("−75.6", "−77.7", "−0.12"),
                ("resnet18", "imagenet", 1000, 5e-6): (None, "−50.48", "+0.23"),
                ("resnet18", "imagenet", 1000, 2e-5): (None, "−54.58", "−0.17")}

NAMES = {"resnet18": "ResNet18", "resnet32": "ResNet32", "resnet34": "ResNet34", "resnet50": "ResNet50",
         "resnet56": "ResNet56", "resnet110": "ResNet110", "mobilenetv2": "MobileNetV2", "vgg16": "VGG16"}
# stripe_pruning's architectures, as the registry names them and as older sessions did (--arch VGG), to
# the papers' names.
STRIPE_ARCHS = {"stripe_vgg16": "vgg16", "vgg": "vgg16", "stripe_resnet56": "resnet56",
                "stripe_resnet18": "resnet18"}


@dataclass(frozen=True)
class PaperRow:
    table: str
    row: str
    value: str  # as printed in the paper
    match: dict
    epochs: int = None  # the paper's schedule, when known
    top5: str = None

    @property
    def top1(self):
        """The row's top-1 accuracy (percent), or None for rows that report reductions."""
        try:
            return float(self.value)
        except ValueError:
            return None

    def text(self):
        value = self.value if self.top5 is None else f"{self.value} (top-5 {self.top5})"
        return f"{value} [{self.table}: {self.row}]"

    def applies_to(self, config):
        return all(config.get(key) in allowed for key, allowed in self.match.items())


def stripe_text(params, flops, accuracy, imagenet=False):
    """A stripe-pruning row as one phrase: '−92.66 % params, −71.16 % FLOPs, accuracy +0.4'."""
    parts = ([] if params is None else [f"{params} % params"]) + [f"{flops} % FLOPs"]
    return ", ".join(parts + [f"{'top-1' if imagenet else 'accuracy'} {accuracy}"])


BASELINE = {"num": (1,), "source": ("external",)}


def _grafting(num, level="layer", source="external"):
    return {"num": (num,), "level": (level,), "criterion": ("entropy",), "source": (source,)}


def _cifar(table, row, value, match):
    return PaperRow(table, row, value, match, CIFAR_EPOCHS)


def _cifar_rows():
    rows = []
    for model, per_classes in CIFAR_TABLE.items():
        for classes, (base, slr, dlr) in zip((10, 100), per_classes):
            common = {"script": ("grafting_cifar",), "data": ("cifar",), "arch": (model,), "num_classes": (classes,)}
            name = f"{NAMES[model]} C{classes}"
            rows += [_cifar("CIFAR grafting", f"{name} baseline", base, {**common, **BASELINE, "cos": (False,)}),
                     _cifar("CIFAR grafting", f"{name} slr", slr,
                            {**common, **_grafting(2), "difflr": (False,), "cos": (False,)}),
                     _cifar("CIFAR grafting", f"{name} dlr", dlr,
                            {**common, **_grafting(2), "difflr": (True,), "cos": (True,)})]
    for classes, column in ((10, 0), (100, 1)):
        common = {"script": ("grafting_cifar",), "data": ("cifar",), "num_classes": (classes,)}
        mobilenet = {**common, "arch": ("mobilenetv2",)}
        for num, values in MOBILENET_NETWORKS.items():
            rows.append(_cifar("MobileNetV2 networks (dlr)", f"C{classes} N={num}", values[column],
                               {**mobilenet, **_grafting(num), "difflr": (True,), "cos": (True,)}))
        # The paper does not say which learning-rate schedule its VGG16 table used: no flags asked.
        vgg = {**common, "arch": ("vgg16",)}
        # Its layer-level row mixed conv weights and their BatchNorms only, as --conv-only does.
        levels = {"baseline": BASELINE, "layer level": {**_grafting(2), "conv_only": (True,)},
                  "filter level": _grafting(2, level="filter")}
        rows += [_cifar("VGG16 levels", f"C{classes} {level}", VGG16_LEVELS[level.split()[0]][column], {**vgg, **match})
                 for level, match in levels.items()]
        # The sources table's baseline equals the CIFAR table's: it was trained with the baseline's schedule.
        same_lr = {"difflr": (False, None), "cos": (False,)}
        scions = {"baseline": {**BASELINE, "cos": (False,)}, "noise": {"num": (1,), "source": ("noise",), **same_lr},
                  "internal": {"num": (1,), "source": ("internal",), **same_lr},
                  "external": {**_grafting(2), **same_lr}}
        rows += [_cifar("scion sources", f"MobileNetV2 C{classes} {source}", SCION_SOURCES[source][column],
                        {**mobilenet, **match}) for source, match in scions.items()]
    return rows


def _other_rows():
    rows = []
    for model, (baseline, grafting) in IMAGENET_TABLE.items():
        # As the release ran them: the baseline with its baseline script's steps, grafting with its cosine.
        common = {"script": ("grafting_imagenet",), "data": ("imagenet",), "arch": (model,), "num_classes": (1000,),
                  "pretrained": (False, None), "source": ("external", None)}
        rows += [PaperRow("ImageNet", f"{NAMES[model]} baseline", baseline[0],
                          {**common, "num": (1,), "cos": (False, None)}, IMAGENET_EPOCHS, baseline[1]),
                 PaperRow("ImageNet", f"{NAMES[model]} grafting", grafting[0],
                          {**common, "num": (2,), "cos": (True,), "level": ("layer", None),
                           "criterion": ("entropy", None)}, IMAGENET_EPOCHS, grafting[1])]
    for (teacher, student), values in GRAFTING_PLUS.items():
        common = {"script": ("grafting_plus",), "data": ("cifar",), "num_classes": (100,), "arch": (student,)}
        pair = f"{NAMES[teacher]} → {NAMES[student]}"
        methods = ((BASELINE, (), "baseline"), (_grafting(2), (), "grafting"),
                   (BASELINE, (teacher,), "distillation"), (_grafting(2), (teacher,), "grafting+"))
        rows += [PaperRow("grafting+ C100", f"{pair} {method}", value, {**common, **ring, "teachers": (teachers,)})
                 for (ring, teachers, method), value in zip(methods, values)]
    for (model, data, classes, sr), reductions in STRIPE_TABLE.items():
        match = {"kind": ("stripe",), "arch": (model,), "data": (data,), "num_classes": (classes,), "pruned": (True,)}
        if sr is not None:
            match["sr"] = (sr,)
        label = f"{NAMES[model]} {'C10' if data == 'cifar' else 'ImageNet'}" + (f" α={sr:g}" if sr else "")
        rows.append(PaperRow("stripe pruning", label, stripe_text(*reductions, imagenet=data == "imagenet"), match,
                             STRIPE_EPOCHS if data == "cifar" else None))
    return rows


PAPER_ROWS = _cifar_rows() + _other_rows()


def configuration(session):
    """The fields a StoredSession is described and matched on, None where not recorded: script, kind, arch
    (lower case; stripe architectures by the papers' names), data (cifar, imagenet, imagefolder, digits, fake),
    dataset, num_classes, num, level, criterion, conv_only, source, difflr, cos, teachers (a tuple of architectures),
    sr, threshold, pruned, evaluate (a checkpoint pruned without training), pretrained, epochs (planned)."""
    get, kind = session.get, session.kind
    arch, dataset = (name.lower() if isinstance(name, str) else None for name in (get("arch"), get("dataset")))
    if kind == "stripe":
        arch = STRIPE_ARCHS.get(arch, arch)
    script, num_classes, sr = get("script"), get("num_classes"), get("sr")
    evaluate = get("evaluate") if kind == "stripe" else None
    pruned = None
    if kind == "stripe" and (evaluate or sr is not None):
        pruned = bool(evaluate or sr)
    data = dataset
    # An image folder of 1000 classes is taken for ImageNet: nothing else in a session tells them apart.
    if dataset in ("imagenet", "imagefolder") or (dataset is None and script == "grafting_imagenet"):
        data = "imagenet" if num_classes == 1000 else "imagefolder"
    teachers = session.record.teacher_archs if "teachers" in session.recorded else None
    return {"script": script, "kind": kind, "arch": arch, "data": data, "dataset": dataset,
            "num_classes": num_classes, "num": get("num") if kind == "grafting" else 1, "level": get("level"),
            "criterion": get("criterion"), "conv_only": get("conv_only"), "source": get("source"),
            "difflr": get("difflr"), "cos": get("cos"),
            "teachers": teachers, "sr": sr, "threshold": get("threshold"),
            "pruned": pruned, "evaluate": evaluate,
            "pretrained": get("pretrained"), "epochs": get("epochs")}


def paper_rows_for(config):
    """The paper rows that apply to a configuration view; rows repeating a number already matched (a
    baseline shared by two tables) are left out."""
    rows, seen = [], set()
    for row in PAPER_ROWS:
        if row.applies_to(config) and row.value not in seen:
            rows.append(row)
            seen.add(row.value)
    return rows


def comparable_baselines(session, baselines):
    """The baselines trained on the same task as `session` (same architecture, data and classes), itself
    left out."""
    keys = ("arch", "data", "num_classes")
    config = configuration(session)
    return [b for b in baselines if b.path.resolve() != session.path.resolve()
            and all(config[k] is not None and configuration(b)[k] == config[k] for k in keys)]
