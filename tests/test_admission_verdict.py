"""``Admission.resources_over`` judges each resource sample once: the same answer until the
next sample (at most every ``SAMPLE_EVERY`` seconds) or a new threshold (a reload)."""

from __future__ import annotations

from dataclasses import replace

from wsflask.admission import SAMPLE_EVERY, Admission
from wsflask.config import Config


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_each_sample_is_judged_once_and_a_new_threshold_judges_again() -> None:
    samples = [{"memory": 0.5, "fds": 0.93}, {"memory": 0.97, "fds": 0.1}]
    probed: list[int] = []

    def probe() -> dict[str, float]:
        probed.append(1)
        return samples[min(len(probed), len(samples)) - 1]

    clock = Clock()
    config = Config(resource_threshold=0.95)
    admission = Admission(config, probe=probe, clock=clock)
    assert admission.resources_over() == ""
    assert admission.resources_over() == ""  # the same sample, the same answer
    admission.reconfigure(replace(config, resource_threshold=0.9))  # a reload, same sample
    assert admission.resources_over() == "fds 0.93 >= 0.90"
    assert len(probed) == 1
    clock.now += SAMPLE_EVERY  # the next sample
    assert admission.resources_over() == "memory 0.97 >= 0.90"
    assert admission.check("127.0.0.1", 0) is not None  # refused: 503 insufficient resources
    assert len(probed) == 2
