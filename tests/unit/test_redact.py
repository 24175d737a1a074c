from skiplock.redact import redact_url, scrub


def test_redact_url_drops_password() -> None:
    assert (
        redact_url("postgresql://app:s3cret@db.internal:5432/jobs") == "app@db.internal:5432/jobs"
    )
    assert redact_url("host=db user=app password=s3cret") == "host=db user=app password=***"


def test_scrub_removes_password_from_driver_text() -> None:
    url = "postgresql://app:s3cret@db:5432/jobs"
    text = f'connection to "{url}" failed: password s3cret rejected'
    cleaned = scrub(text, url)
    assert "s3cret" not in cleaned
