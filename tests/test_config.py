"""Every option of every config group composes, and the schema/validation reject bad values."""

import pytest
from omegaconf import OmegaConf

from qexp.config import GROUPS, check_overrides, compose, group_options, validate
from qexp.errors import QexpError


@pytest.mark.parametrize("group", [g for g in GROUPS if g != "experiment"])
def test_every_group_option_composes(group):
    options = group_options(group)
    assert options, f"configs/{group}/ is empty"
    for option in options:
        cfg = compose([f"{group}={option}"])
        assert cfg[group] is not None
        if group == "dataset" and "dataset.root" in OmegaConf.missing_keys(cfg):
            with pytest.raises(QexpError, match="dataset.root is required"):
                validate(cfg)
            cfg = compose([f"{group}={option}", "dataset.root=/data/somewhere"])
        OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
        validate(cfg)


@pytest.mark.parametrize("experiment", group_options("experiment"))
def test_every_experiment_composes(experiment):
    cfg = compose([f"experiment={experiment}"])
    if "dataset.root" in OmegaConf.missing_keys(cfg):  # paper-scale data: a local path is required
        cfg = compose([f"experiment={experiment}", "dataset.root=/data/somewhere"])
    OmegaConf.to_container(cfg, resolve=True)
    validate(cfg)


def test_bits_interpolates_into_quantizer():
    cfg = compose(["quant=uniform", "bits=3"])
    assert cfg.quant.bits == 3


def test_defaults_are_the_embedded_default():
    cfg = compose([])
    assert cfg.dataset._target_ == "qexp.data.embedded.digits"
    assert cfg.model._target_ == "qexp.models.mlp.mlp"
    assert cfg.quant.name == "fp32"


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        (["bits=0"], "bits=0"),
        (["bits=33"], "bits=33"),
        (["quant=nonsense"], "quant=nonsense"),
        (["trainer.epochs=-1"], "trainer.epochs=-1"),
        (["trainer.optimizer=rmsprop"], "trainer.optimizer"),
        (["trainer.lr=0"], "trainer.lr"),
        (["trainer.foo=1"], "trainer.foo"),
        (["bits=abc"], "bits"),
        (["seed=-3"], "seed"),
    ],
)
def test_bad_overrides_name_the_key(overrides, fragment):
    with pytest.raises(QexpError) as info:
        check_overrides(overrides)
    msg = str(info.value)
    assert fragment in msg
    assert "\n" not in msg


def test_multirun_checks_every_job():
    with pytest.raises(QexpError, match="bits=0"):
        check_overrides(["bits=4,0", "quant=uniform"], multirun=True)
    assert len(check_overrides(["bits=2,4", "quant=fp32,uniform"], multirun=True)) == 4
