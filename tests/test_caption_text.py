"""Every answer is cleaned up the same way before it is stored."""

from __future__ import annotations

import pytest

from ghibli_async.caption.answers import KeyRejected, ModelUnavailable, RateLimited, TransientError
from ghibli_async.caption.checks import check_caption
from ghibli_async.caption.gemini import classify_api_error
from ghibli_async.caption.text import build_prompt, normalize_caption
from ghibli_async.config import CaptionConfig


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Ghibli stylea young boy runs", "Ghibli style, a young boy runs"),
        ("Ghibli style, a girl in a straw hat.", "Ghibli style, a girl in a straw hat"),
        ("**Ghibli style** a girl\nin the rain.\n", "Ghibli style, a girl in the rain"),
        ('"Caption: ghibli style - two men on a ledge."', "Ghibli style, two men on a ledge"),
        ("A boy stands by a well", "Ghibli style, A boy stands by a well"),
        ("- Ghibli style:  a cat   on a roof..", "Ghibli style, a cat on a roof"),
        ("Ghibli style, Ghibli style, a baker on a boat", "Ghibli style, a baker on a boat"),
    ],
)
def test_normalize(raw: str, expected: str) -> None:
    assert normalize_caption(raw, "Ghibli style") == expected


def test_the_separator_after_the_trigger_is_a_setting() -> None:
    assert normalize_caption("Ghibli style, a girl", "Ghibli style", " ") == "Ghibli style a girl"
    assert CaptionConfig().separator == ", "


def test_checks_word_count_and_banned_names() -> None:
    config = CaptionConfig(min_words=4, max_words=8, banned_words=["Totoro", "Spirited Away"])

    def reasons(text: str) -> list[str]:
        return [finding.reason for finding in check_caption(text, config) if finding.check != "generic"]

    assert reasons("Ghibli style a girl waits by the road") == []
    assert reasons("Ghibli style Totoro") == ["3 words (allowed 4-8)", "banned word: Totoro", "a name: Totoro"]
    assert reasons("Ghibli style a scene from spirited away") == ["banned word: Spirited Away"]


def test_prompt_names_the_trigger() -> None:
    assert "'Magic style'" in build_prompt(CaptionConfig(trigger="Magic style"))


def quota_body(quota_id: str, value: str, delay: str | None) -> dict:
    details = [
        {
            "@type": "type.googleapis.com/google.rpc.QuotaFailure",
            "violations": [{"quotaId": quota_id, "quotaValue": value}],
        }
    ]
    if delay:
        details.append({"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": delay})
    return {"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", "message": "quota", "details": details}}


def test_classify_errors_by_what_the_body_says() -> None:
    minute = classify_api_error(429, quota_body("GenerateRequestsPerMinutePerProjectPerModel-FreeTier", "10", "37s"))
    assert minute == RateLimited("minute", 37.0, 10, "quota")
    day = classify_api_error(429, quota_body("GenerateRequestsPerDayPerProjectPerModel-FreeTier", "20", "3s"))
    assert isinstance(day, RateLimited) and (day.scope, day.quota_value) == ("day", 20)
    tokens = classify_api_error(429, quota_body("GenerateContentInputTokensPerModelPerMinute-FreeTier", "250000", None))
    assert isinstance(tokens, RateLimited) and (tokens.scope, tokens.retry_after) == ("tokens", None)
    bare = classify_api_error(429, {"error": {"code": 429, "message": "Resource exhausted"}})
    assert isinstance(bare, RateLimited) and (bare.scope, bare.retry_after, bare.quota_value) == ("minute", None, None)
    invalid = {
        "error": {
            "code": 400,
            "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID"}],
        }
    }
    assert isinstance(classify_api_error(400, invalid), KeyRejected)
    assert isinstance(classify_api_error(403, {"error": {"code": 403}}), KeyRejected)
    assert isinstance(classify_api_error(404, {"error": {"code": 404}}), ModelUnavailable)
    assert isinstance(classify_api_error(503, {"error": {"code": 503}}), TransientError)
