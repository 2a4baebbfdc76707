"""The 28 HPA subcellular compartments and the image channels, in Kaggle order.

Class numbers are the ones in the Kaggle 2019 ``train.csv`` ``Target`` column
(the seed paper's Table 2); channel order is the order of the last image axis
everywhere in hpajax.
"""

CLASS_NAMES: tuple[str, ...] = (
    "Nucleoplasm",  # 0
    "Nuclear membrane",  # 1
    "Nucleoli",  # 2
    "Nucleoli fibrillar center",  # 3
    "Nuclear speckles",  # 4
    "Nuclear bodies",  # 5
    "Endoplasmic reticulum",  # 6
    "Golgi apparatus",  # 7
    "Peroxisomes",  # 8
    "Endosomes",  # 9
    "Lysosomes",  # 10
    "Intermediate filaments",  # 11
    "Actin filaments",  # 12
    "Focal adhesion sites",  # 13
    "Microtubules",  # 14
    "Microtubule ends",  # 15
    "Cytokinetic bridge",  # 16
    "Mitotic spindle",  # 17
    "Microtubule organizing center",  # 18
    "Centrosome",  # 19
    "Lipid droplets",  # 20
    "Plasma membrane",  # 21
    "Cell junctions",  # 22
    "Mitochondria",  # 23
    "Aggresome",  # 24
    "Cytosol",  # 25
    "Cytoplasmic bodies",  # 26
    "Rods & rings",  # 27
)
NUM_CLASSES: int = len(CLASS_NAMES)

# Positives per class in the 31,072 rows of the Kaggle 2019 train.csv (the
# seed's Table 2 totals); the synthetic generator draws labels to match them.
KAGGLE_TRAIN_COUNTS: tuple[int, ...] = (
    12885, 1254, 3621, 1561, 1858, 2513, 1008, 2822, 53, 45, 28, 1093, 688, 537,
    1066, 21, 530, 210, 902, 1482, 172, 3777, 802, 2965, 322, 8228, 328, 11,
)
KAGGLE_TRAIN_SIZE: int = 31072

# Microtubules (red), protein of interest (green), nucleus (blue), ER (yellow).
CHANNELS: tuple[str, ...] = ("red", "green", "blue", "yellow")
NUM_CHANNELS: int = len(CHANNELS)
