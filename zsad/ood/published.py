"""Published AUROC of DiffPathV2 with a CelebA base model (EigenScore paper, Table 1; design.md §5).

Keyed by (ID, OOD) dataset registry names; shown beside our numbers where a pair matches."""

PUBLISHED_AUROC: dict[str, dict[tuple[str, str], float]] = {
    "diffpath_v2": {
        ("celeba", "cifar10"): 1.000,
        ("celeba", "cifar100"): 0.995,
        ("celeba", "svhn"): 0.969,
        ("cifar10", "cifar100"): 0.535,
        ("cifar10", "svhn"): 0.812,
        ("cifar10", "celeba"): 0.862,
        ("cifar100", "cifar10"): 0.483,
        ("cifar100", "svhn"): 0.724,
        ("cifar100", "celeba"): 0.513,
        ("svhn", "cifar10"): 0.969,
        ("svhn", "cifar100"): 0.975,
        ("svhn", "celeba"): 0.883,
    }
}
PUBLISHED_SOURCE = "DiffPathV2 with a CelebA base model, EigenScore paper Table 1; shown only when our backbone was trained on CelebA"
