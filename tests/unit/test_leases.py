from skiplock.leases import runs_that_lost_their_lease


class Run:
    """Stands for one execution; two runs of the same job and attempt are still two objects."""


def test_a_refused_renewal_marks_the_run_we_still_hold() -> None:
    a, b = Run(), Run()
    assert runs_that_lost_their_lease({1: a, 2: b}, renewed={2}, held_now={1: a, 2: b}) == [a]


def test_renewed_runs_are_kept() -> None:
    a = Run()
    assert runs_that_lost_their_lease({1: a}, renewed={1}, held_now={1: a}) == []


def test_a_run_settled_meanwhile_is_not_marked() -> None:
    a = Run()
    assert runs_that_lost_their_lease({1: a}, renewed=set(), held_now={}) == []


def test_a_new_claim_of_the_same_job_during_the_renewal_is_not_marked() -> None:
    # The crash case: the old run's claim was lost, the same worker claimed the job again (same
    # attempt number) while the renewal for the old run was in flight. Only the old run lost.
    old, new = Run(), Run()
    assert runs_that_lost_their_lease({7: old}, renewed=set(), held_now={7: new}) == []
