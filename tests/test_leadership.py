"""The one staleness rule (powergrid.protocols.leadership): each verdict, exactly."""

from __future__ import annotations

from powergrid.protocols.leadership import Leadership, Verdict
from powergrid.types import Epoch, NodeId

A, B = NodeId(1), NodeId(2)


def test_fresh_record_follows_any_real_epoch() -> None:
    rec = Leadership()
    assert rec.judge(A, Epoch(1)) is Verdict.NEWER
    assert not rec.stale(1)


def test_verdicts_against_a_followed_leader() -> None:
    rec = Leadership()
    rec.follow(A, Epoch(5))
    assert (rec.leader, rec.epoch) == (A, 5)
    assert rec.judge(A, Epoch(4)) is Verdict.STALE
    assert rec.stale(4) and not rec.stale(5) and not rec.stale(6)
    assert rec.judge(A, Epoch(5)) is Verdict.SAME
    assert rec.judge(B, Epoch(5)) is Verdict.TWIN
    assert rec.judge(B, Epoch(6)) is Verdict.NEWER
    assert [v.follow for v in Verdict] == [False, False, True, True]


def test_epochs_compare_as_serial_numbers_across_the_wrap() -> None:
    rec = Leadership(A, Epoch(2**32 - 1))
    assert rec.judge(B, Epoch(1)) is Verdict.NEWER  # 1 follows 2**32 - 1
    assert rec.judge(B, Epoch(2**32 - 2)) is Verdict.STALE


def test_obey_follows_all_but_a_stale_announcement() -> None:
    rec = Leadership(A, Epoch(5))
    assert rec.obey(B, Epoch(4)) is Verdict.STALE
    assert (rec.leader, rec.epoch) == (A, 5)
    assert rec.obey(A, Epoch(5)) is Verdict.SAME
    assert (rec.leader, rec.epoch) == (A, 5)
    assert rec.obey(B, Epoch(5)) is Verdict.TWIN
    assert (rec.leader, rec.epoch) == (B, 5)
    assert rec.obey(A, Epoch(7)) is Verdict.NEWER
    assert (rec.leader, rec.epoch) == (A, 7)


def test_forget_starts_over_from_epoch_zero() -> None:
    rec = Leadership(A, Epoch(9))
    rec.forget()
    assert (rec.leader, rec.epoch) == (None, 0)
    assert rec.obey(B, Epoch(1)) is Verdict.NEWER
    assert (rec.leader, rec.epoch) == (B, 1)
