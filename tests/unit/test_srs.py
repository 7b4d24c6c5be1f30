"""SrsRewriter: the SRS rules, rotation, expiry, case, and forged or short hashes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from rescue import config
from rescue.errors import SrsError
from rescue.srs.rewriter import SECONDS_PER_DAY, TIMESTAMP_SLOTS, SrsRewriter

SECRET = "first-secret-0123456789abcdef"
OLD_SECRET = "older-secret-fedcba9876543210"
DOMAIN = "srs.test"
# 2026-11-28 12:00 UTC: day 20,785, which is 305 modulo 1024, timestamp "JR".
NOW = 20_785 * SECONDS_PER_DAY + 12 * 3600


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance_days(self, days: float) -> None:
        self.now += days * SECONDS_PER_DAY


def rewriter(
    secrets: tuple[str, ...] = (SECRET,), clock: Clock | None = None, **kwargs: object
) -> SrsRewriter:
    return SrsRewriter(
        domain=DOMAIN,
        secrets=secrets,
        clock=clock or Clock(),
        **kwargs,  # type: ignore[arg-type]
    )


SRS0 = re.compile(r"SRS0=([^=]{4})=JR=example\.com=alice@srs\.test")


# --- which senders are rewritten, and how -------------------------------------------------


def test_plain_sender_becomes_srs0() -> None:
    assert SRS0.fullmatch(rewriter().forward("alice@example.com"))


def test_null_sender_stays_null() -> None:
    assert rewriter().forward("") == ""


@pytest.mark.parametrize("sender", ["bob@srs.test", "Bob@SRS.Test"])
def test_sender_at_our_domain_is_kept(sender: str) -> None:
    assert rewriter().forward(sender) == sender


def test_our_own_srs_address_is_not_wrapped_again() -> None:
    srs = rewriter()
    address = srs.forward("alice@example.com")
    assert srs.forward(address) == address


@pytest.mark.parametrize(
    ("sender", "kept"),
    [
        ("a@partner.test", True),
        ("a@PARTNER.test", True),
        ("a@mail.partner.test", False),  # "partner.test" is that domain only
        ("a@mail.group.test", True),  # ".group.test" is every subdomain
        ("a@group.test", False),  # ... but not the domain itself (as postsrsd)
        ("a@notpartner.test", False),
    ],
)
def test_excluded_domains(sender: str, kept: bool) -> None:
    srs = rewriter(exclude_domains=("partner.test", ".group.test"))
    assert (srs.forward(sender) == sender) is kept


def test_srs0_of_another_domain_becomes_srs1_to_the_first_hop() -> None:
    result = rewriter().forward("SRS0=abcd=TT=orig.test=bob@first.test")
    assert re.fullmatch(r"SRS1=[^=]{4}=first\.test==abcd=TT=orig\.test=bob@srs\.test", result)


def test_srs1_of_another_domain_is_re_signed_keeping_the_first_hop() -> None:
    result = rewriter().forward("SRS1=XXXX=first.test==abcd=TT=orig.test=bob@second.test")
    assert re.fullmatch(r"SRS1=[^=]{4}=first\.test==abcd=TT=orig\.test=bob@srs\.test", result)
    assert rewriter().reverse(result) == "SRS0=abcd=TT=orig.test=bob@first.test"


def test_tags_are_recognised_in_any_case_and_separator() -> None:
    result = rewriter().forward("srs0+opaque@first.test")
    assert re.fullmatch(r"SRS1=[^=]{4}=first\.test=\+opaque@srs\.test", result)


def test_malformed_srs1_local_part_is_wrapped_like_any_sender() -> None:
    srs = rewriter()
    result = srs.forward("srs1-fan@example.com")
    assert result.startswith("SRS0=")
    assert srs.reverse(result) == "srs1-fan@example.com"


def test_equals_signs_in_the_local_part_survive() -> None:
    srs = rewriter()
    assert srs.reverse(srs.forward("a=b==c@example.com")) == "a=b==c@example.com"


@pytest.mark.parametrize(
    "sender",
    [
        "no-at-sign",
        "@example.com",
        "alice@",
        '"john doe"@example.com',  # quoted: the SRS address would need quoting too
        "a@b@example.com",  # postsrsd splits at the first '@', srslib at the last
        "john doe@example.com",
        "user@[192.0.2.1]",
        "jörg@example.com",
        "alice@exa=mple.com",
        "alice@example..com",
    ],
)
def test_senders_that_cannot_be_rewritten_safely(sender: str) -> None:
    with pytest.raises(SrsError):
        rewriter().forward(sender)


def test_hash_length_is_configurable() -> None:
    srs = rewriter(hash_length=8)
    address = srs.forward("alice@example.com")
    assert re.fullmatch(r"SRS0=[^=]{8}=JR=example\.com=alice@srs\.test", address)
    assert srs.reverse(address) == "alice@example.com"


# --- what reverses ------------------------------------------------------------------------


def test_reverse_of_srs0_gives_the_sender_back() -> None:
    srs = rewriter()
    assert srs.reverse(srs.forward("Alice@Example.com")) == "Alice@Example.com"


def test_reverse_ignores_case_as_mail_systems_fold_it() -> None:
    srs = rewriter()
    address = srs.forward("alice@example.com")
    assert srs.reverse(address.upper()) == "ALICE@EXAMPLE.COM"
    assert srs.reverse(address.lower()) == "alice@example.com"


def test_rotation_first_secret_signs_every_secret_verifies() -> None:
    old = rewriter(secrets=(OLD_SECRET,))
    new = rewriter(secrets=(SECRET, OLD_SECRET))
    from_old = old.forward("alice@example.com")
    from_new = new.forward("alice@example.com")
    assert from_new != from_old  # signed with the first secret
    assert new.reverse(from_old) == "alice@example.com"
    assert new.reverse(from_new) == "alice@example.com"
    with pytest.raises(SrsError, match="does not verify"):
        old.reverse(from_new)  # a secret dropped from the list no longer verifies


@pytest.mark.parametrize(("days", "ok"), [(0, True), (1, True), (21, True), (22, False)])
def test_expiry_follows_postsrsd(days: int, ok: bool) -> None:
    clock = Clock()
    srs = rewriter(clock=clock)
    address = srs.forward("alice@example.com")
    clock.advance_days(days)
    if ok:
        assert srs.reverse(address) == "alice@example.com"
    else:
        with pytest.raises(SrsError, match="expired"):
            srs.reverse(address)


def test_max_age_is_configurable() -> None:
    clock = Clock()
    srs = rewriter(clock=clock, max_age_days=3)
    address = srs.forward("alice@example.com")
    clock.advance_days(3)
    assert srs.reverse(address) == "alice@example.com"
    clock.advance_days(1)
    with pytest.raises(SrsError, match="expired"):
        srs.reverse(address)


def test_timestamp_from_the_future_is_refused() -> None:
    clock = Clock()
    srs = rewriter(clock=clock)
    clock.advance_days(2)
    address = srs.forward("alice@example.com")
    clock.advance_days(-2)
    with pytest.raises(SrsError, match="expired"):
        srs.reverse(address)


def test_timestamps_wrap_after_1024_days() -> None:
    clock = Clock(1023 * SECONDS_PER_DAY)  # the last day of a cycle
    srs = rewriter(clock=clock)
    address = srs.forward("alice@example.com")
    clock.advance_days(5)  # day 0 of the next one
    assert srs.reverse(address) == "alice@example.com"


# The day numbers around the next two wraps of the 10-bit day counter after NOW's day
# (day 21,504 is 2028-11-16, day 22,528 is 2031-09-06), and any other day.
WRAP_DAYS = (21_504, 22_528)


@given(
    st.one_of(
        st.sampled_from([d + off for d in WRAP_DAYS for off in range(-30, 2)]),
        st.integers(min_value=0, max_value=60_000),
    ),
    st.integers(min_value=0, max_value=TIMESTAMP_SLOTS - 1),
)
@example(21_503, 1)
@example(21_503, 21)
@example(21_503, 22)
@example(21_490, 1023)
def test_expiry_counts_days_across_the_wrap(signed_on: int, age: int) -> None:
    clock = Clock(signed_on * SECONDS_PER_DAY + 23 * 3600)
    srs = rewriter(clock=clock)
    address = srs.forward("alice@example.com")
    clock.advance_days(age)
    if age <= 21:
        assert srs.reverse(address) == "alice@example.com"
    else:
        with pytest.raises(SrsError, match=f"expired \\({age} days old"):
            srs.reverse(address)


def test_srs1_does_not_expire() -> None:
    clock = Clock()
    srs = rewriter(clock=clock)
    address = srs.forward("SRS0=abcd=TT=orig.test=bob@first.test")
    clock.advance_days(400)
    assert srs.reverse(address) == "SRS0=abcd=TT=orig.test=bob@first.test"


# --- what must never reverse --------------------------------------------------------------


def _with_hash(address: str, digest: str) -> str:
    return re.sub(r"^(SRS[01]=)[^=]*", lambda m: m.group(1) + digest, address)


def test_short_hash_is_refused_even_when_it_is_a_true_prefix() -> None:
    # srslib alone would check only as many characters as given.
    srs = rewriter()
    address = srs.forward("alice@example.com")
    digest = SRS0.fullmatch(address).group(1)  # type: ignore[union-attr]
    for length in (1, 2, 3):
        with pytest.raises(SrsError, match="shorter"):
            srs.reverse(_with_hash(address, digest[:length]))


def test_one_character_hashes_never_verify() -> None:
    srs = rewriter()
    address = srs.forward("alice@example.com")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    for char in alphabet:
        with pytest.raises(SrsError):
            srs.reverse(_with_hash(address, char))


def test_longer_hash_must_be_right_on_every_character() -> None:
    srs = rewriter()
    eight = rewriter(hash_length=8).forward("alice@example.com")
    assert srs.reverse(eight) == "alice@example.com"  # a true 8-character hash
    with pytest.raises(SrsError, match="does not verify"):
        srs.reverse(_with_hash(eight, eight[5:9] + "xxxx"))


def test_changed_fields_break_the_hash() -> None:
    srs = rewriter()
    address = srs.forward("alice@example.com")
    for forged in (
        address.replace("alice", "mallory"),
        address.replace("example.com", "evil.test"),
        address.replace("=JR=", "=JS="),
    ):
        with pytest.raises(SrsError):
            srs.reverse(forged)


def test_another_secret_does_not_verify() -> None:
    address = rewriter(secrets=("some-other-secret-0000000000",)).forward("alice@example.com")
    with pytest.raises(SrsError, match="does not verify"):
        rewriter().reverse(address)


@pytest.mark.parametrize("domain", ["elsewhere.test", "sub.srs.test", "srs.test.evil"])
def test_reverse_refuses_other_domains(domain: str) -> None:
    # libsrs2 (and srslib) ignore the domain of the address they reverse.
    srs = rewriter()
    address = srs.forward("alice@example.com").replace("@srs.test", "@" + domain)
    with pytest.raises(SrsError, match="not at our SRS domain"):
        srs.reverse(address)


@pytest.mark.parametrize(
    "address",
    [
        "postmaster@srs.test",
        "@srs.test",
        "srs.test",
        "SRS0@srs.test",
        "SRS0=@srs.test",
        "SRS0=abcd=JR=example.com@srs.test",  # no local part
        "SRS0=abcd=JR==alice@srs.test",  # empty host
        "SRS0=abcd=J=example.com=alice@srs.test",
        "SRS0=ab!d=JR=example.com=alice@srs.test",
        "SRS1=abcd=first.test@srs.test",
        "SRS1=abcd=first.test=x@srs.test",  # the opaque part starts with a separator
        "SRS0=abcd=JR=example.com=jörg@srs.test",
    ],
)
def test_malformed_addresses_do_not_reverse(address: str) -> None:
    with pytest.raises(SrsError):
        rewriter().reverse(address)


# --- configuration ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"secrets": ()}, "at least one"),
        ({"secrets": ("",)}, "#1 has 0 characters"),
        ({"secrets": (SECRET, "short")}, "#2 has 5 characters"),
        ({"secrets": ("a" * 20 + "\n",)}, "line break"),
        ({"hash_length": 3}, "hash_length"),
        ({"hash_length": 28}, "hash_length"),
        ({"max_age_days": 0}, "max_age_days"),
        ({"max_age_days": 1024}, "max_age_days"),
        ({"domain": "not a domain"}, "not a host name"),
        ({"exclude_domains": ("a@b",)}, "not a host name"),
    ],
)
def test_bad_settings_are_refused(kwargs: dict[str, object], message: str) -> None:
    settings: dict[str, object] = {"domain": DOMAIN, "secrets": (SECRET,)} | kwargs
    with pytest.raises(SrsError, match=message):
        SrsRewriter(**settings)  # type: ignore[arg-type]


def test_a_single_string_is_not_taken_for_a_list_of_secrets() -> None:
    with pytest.raises(TypeError):
        SrsRewriter(domain=DOMAIN, secrets=SECRET)


def test_secrets_stay_out_of_messages_and_repr() -> None:
    with pytest.raises(SrsError) as info:
        SrsRewriter(domain=DOMAIN, secrets=(SECRET, "tooshort"))
    assert "tooshort" not in str(info.value)
    assert SECRET not in repr(rewriter())


def test_from_config(tmp_path: Path) -> None:
    cfg = config.SrsConfig(
        domain=DOMAIN,
        secret_file=tmp_path / "secrets",
        secrets=(config.Secret(SECRET), config.Secret(OLD_SECRET)),
        exclude_domains=("partner.test",),
        hash_length=6,
        max_age_days=10,
    )
    srs = SrsRewriter.from_config(cfg, clock=Clock())
    assert srs.forward("a@partner.test") == "a@partner.test"
    signed = srs.forward("alice@example.com")
    assert re.match(r"SRS0=[^=]{6}=", signed)
    assert rewriter(secrets=(SECRET,), hash_length=6).reverse(signed) == "alice@example.com"
    # The same config with the same clock: it signs and reverses one way.
    assert srs.reverse(signed) == "alice@example.com"


# --- properties ---------------------------------------------------------------------------

ATEXT = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+/=?^_`{|}~.-"
locals_ = st.text(alphabet=ATEXT, min_size=1, max_size=40)
labels = st.from_regex(r"[a-zA-Z0-9]([a-zA-Z0-9-]{0,20}[a-zA-Z0-9])?", fullmatch=True)
domains = st.lists(labels, min_size=1, max_size=4).map(".".join)
senders = st.builds(lambda local, domain: f"{local}@{domain}", locals_, domains).filter(
    lambda s: s.rpartition("@")[2].lower() != DOMAIN
)


@given(senders)
@example("alice@example.com")
@example("SRS0=abcd=TT=orig.test=bob@first.test")
@example("srs0-x@first.test")
@example("srs1==@example.com")
@example("=@a")
def test_reverse_undoes_forward(sender: str) -> None:
    srs = rewriter()
    forwarded = srs.forward(sender)
    assert forwarded.endswith("@srs.test")
    back = srs.reverse(forwarded)
    local = sender.rpartition("@")[0]
    if local[:4].upper() == "SRS1" and forwarded.startswith("SRS1"):
        assert back.startswith("SRS0")  # the first hop, skipping the second
    elif local[:4].upper() == "SRS0" and local[4:5] in ("=", "+", "-"):
        assert back == "SRS0" + sender[4:]  # the tag in capitals, the rest verbatim
    else:
        assert back == sender


@given(senders, st.text(alphabet=ATEXT.replace("=", ""), min_size=1, max_size=8))
def test_forged_hashes_never_reverse(sender: str, digest: str) -> None:
    srs = rewriter()
    forwarded = srs.forward(sender)
    true_digest = forwarded[5:].split("=", 1)[0]
    forged = _with_hash(forwarded, digest)
    if digest.lower() == true_digest.lower():
        return  # hypothesis found the real hash: not a forgery
    with pytest.raises(SrsError):
        srs.reverse(forged)
