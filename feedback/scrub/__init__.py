"""Replace credentials in free text with typed placeholders before anything is stored.

`scrub_text(text)` returns the text with every detected secret replaced by `<secret:KIND>`, plus a
count per KIND; `may_hold_secrets(texts)` says cheaply whether it could find any. What is detected,
one module per kind of rule:

* shapes.py: provider tokens by shape (AWS, GitHub, GitLab, Slack, Stripe, PyPI, SendGrid, Twilio,
  OpenAI, Anthropic, Google, npm, JWTs), private key blocks, and the password in
  `scheme://user:PASSWORD@host`.
* keywords.py: values assigned to secret-sounding names (`password = "..."`, `API_KEY=...`,
  `Authorization: Bearer ...`), with what is left alone on purpose.
* prefilter.py: which detectors can match at all (one Aho-Corasick pass over their anchors), and the
  driver that runs them and replaces what they find.

Every detector keeps two rules that the prefilter and the collector rely on:

* Every case-insensitive detector is compiled with re.ASCII, so it cannot match a non-ASCII case
  variant of an anchor that the lower-cased text would not show.
* Worst case: every detector regex starts at a literal and is bounded or possessive, or is only tried
  at the start of a token, and look-backs from a match are bounded, so a long line costs linear time.
  detect-secrets' own OpenAI and JWT regexes are not used as scanners for that reason: they backtrack
  quadratically on repeated prefixes (benchmarks/README.md has the times).
"""

from feedback.scrub.prefilter import may_hold_secrets, scrub_text

__all__ = ["SCRUB_VERSION", "may_hold_secrets", "scrub_text"]

SCRUB_VERSION = "1"
