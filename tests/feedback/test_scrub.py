"""Tests for feedback.scrub.

Provider tokens are assembled at run time from a prefix and seeded random characters, so that they are
format-valid but fake and this file holds nothing that a push-protection scanner would flag.
"""

from __future__ import annotations

import base64
import json
import random
import string
import time

import pytest
from detect_secrets.plugins.private_key import PrivateKeyDetector

from feedback import scrub
from feedback.scrub import SCRUB_VERSION, keywords, prefilter, scrub_text

_RNG = random.Random(1234)
ALNUM = string.ascii_letters + string.digits
URLSAFE = ALNUM + "-_"
BASE64 = ALNUM + "+/"
HEX = "0123456789abcdef"
ALL_DETECTORS = (1 << len(prefilter._DETECTORS)) - 1

AWS_KEY_ID = "AKIAIOSFODNN7EXAMPLE"  # AWS's documented example credentials
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"


def fake(length: int, alphabet: str = ALNUM) -> str:
    return "".join(_RNG.choice(alphabet) for _ in range(length))


def b64url_json(obj: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


def pem(kind: str, lines: int = 6, end: bool = True) -> str:
    label = f"{kind} PRIVATE KEY" if kind else "PRIVATE KEY"
    body = "\n".join(fake(64, BASE64) for _ in range(lines)) + "\n" + fake(24, BASE64) + "=="
    block = "-----BEGIN " + label + "-----\n" + body
    return block + "\n-----END " + label + "-----" if end else block


def placeholder(kind: str) -> str:
    return f"<secret:{kind}>"


GITHUB_TOKEN = "gh" + "p_" + fake(36)
GITHUB_PAT = "github_" + "pat_" + fake(22) + "_" + fake(59)
GITLAB_TOKEN = "gl" + "pat-" + fake(20, URLSAFE)
SLACK_TOKEN = "xo" + "xb-" + fake(12, "0123456789") + "-" + fake(13, "0123456789") + "-" + fake(24)
SLACK_WEBHOOK = (
    "https://hooks.slack.com/services/T"
    + fake(10, string.ascii_uppercase + string.digits)
    + "/B"
    + fake(10)
    + "/"
    + fake(24)
)
STRIPE_KEY = "sk_" + "live_" + fake(99)  # longer than detect-secrets' 24 characters, as current keys are
OPENAI_KEY = "sk-" + "proj-" + fake(56, URLSAFE) + "T3Blbk" + "FJ" + fake(56, URLSAFE)
OPENAI_LEGACY_KEY = "sk-" + fake(20) + "T3Blbk" + "FJ" + fake(20)
ANTHROPIC_KEY = "sk-" + "ant-api03-" + fake(93, URLSAFE) + "AA"
GOOGLE_KEY = "AI" + "za" + fake(35, URLSAFE)
NPM_TOKEN = "npm" + "_" + fake(36)
PYPI_TOKEN = "pypi-" + "AgEIcHlwaS5vcmc" + fake(120, URLSAFE)
SENDGRID_KEY = "SG" + "." + fake(22, URLSAFE) + "." + fake(43, URLSAFE)
TWILIO_SID = "AC" + fake(32, HEX)
JWT = (
    b64url_json({"alg": "HS256", "typ": "JWT"})
    + "."
    + b64url_json({"sub": "1234567890", "name": "Ada", "iat": 1516239022})
    + "."
    + fake(43, URLSAFE)
)
RSA_KEY = pem("RSA")

# (kind, code before the secret, the secret, code after it): one realistic example per KIND.
KIND_EXAMPLES = [
    (
        "aws_access_key",
        'import boto3\n\nsession = boto3.Session(\n    aws_access_key_id="',
        AWS_KEY_ID,
        '",\n    region_name="us-east-1",\n)\n',
    ),
    ("aws_secret_key", 's3 = boto3.client(\n    "s3",\n    aws_secret_access_key="', AWS_SECRET, '",\n)\n'),
    (
        "github_token",
        'from github import Github\n\ngh = Github("',
        GITHUB_TOKEN,
        '")\nrepo = gh.get_repo("octo/hello")\n',
    ),
    (
        "gitlab_token",
        'gl = gitlab.Gitlab("https://gitlab.example.com", private_token="',
        GITLAB_TOKEN,
        '")\ngl.auth()\n',
    ),
    (
        "slack_token",
        'client = WebClient(token="',
        SLACK_TOKEN,
        '")\nclient.chat_postMessage(channel="#ops", text="up")\n',
    ),
    ("slack_webhook", "requests.post(\n    '", SLACK_WEBHOOK, "',\n    json={'text': 'build passed'},\n)\n"),
    (
        "stripe_key",
        'import stripe\n\nstripe.api_key = "',
        STRIPE_KEY,
        '"\nstripe.Charge.create(amount=2000, currency="usd")\n',
    ),
    ("openai_key", "from openai import OpenAI\n\nclient = OpenAI(api_key='", OPENAI_KEY, "')\n"),
    (
        "anthropic_key",
        'client = anthropic.Anthropic(\n    api_key="',
        ANTHROPIC_KEY,
        '",\n)\nclient.messages.create()\n',
    ),
    (
        "google_api_key",
        'url = f"https://maps.googleapis.com/maps/api/geocode/json?address={address}&key=',
        GOOGLE_KEY,
        '"\nresp = requests.get(url, timeout=5)\n',
    ),
    (
        "npm_token",
        "registry=https://registry.npmjs.org/\n//registry.npmjs.org/:_authToken=",
        NPM_TOKEN,
        "\nalways-auth=true\n",
    ),
    ("pypi_token", "[distutils]\nindex-servers = pypi\n\n[pypi]\nusername = __token__\npassword = ", PYPI_TOKEN, "\n"),
    ("sendgrid_key", 'sg = SendGridAPIClient("', SENDGRID_KEY, '")\nresponse = sg.send(message)\n'),
    ("twilio_key", 'from twilio.rest import Client\n\nclient = Client("', TWILIO_SID, '", auth_token)\n'),
    ("jwt", 'resp = httpx.get(url, headers={"Authorization": "Bearer ', JWT, '"})\nresp.raise_for_status()\n'),
    ("private_key", 'SIGNING_KEY = """', RSA_KEY, '"""\n\n\ndef sign(payload: bytes) -> bytes:\n    ...\n'),
    ("connection_string_password", 'engine = create_engine("postgres://app:', "Xy7pQ2vLm9", '@db:5432/x")\n'),
    ("password", 'DATABASES = {"default": {"USER": "app", "PASSWORD": "', "hunter2xyz!", '"}}\n'),
    ("secret", 'app = Flask(__name__)\napp.config["SECRET_KEY"] = "', "9f8e7d6c5b4a3f2e1d0c", '"\n'),
    ("token", "bot:\n  name: deploy-bot\n  API_TOKEN: '", "abc123XYZ789qwe", "'\n  channel: ops\n"),
    (
        "api_key",
        'const firebaseConfig = {\n  apiKey: "',
        "Zq8mPx2LkW9aB3cD",
        '",\n  authDomain: "demo.firebaseapp.com",\n};\n',
    ),
]


@pytest.mark.parametrize(("kind", "before", "secret", "after"), KIND_EXAMPLES, ids=[e[0] for e in KIND_EXAMPLES])
def test_each_kind_is_replaced_in_realistic_code(kind: str, before: str, secret: str, after: str) -> None:
    scrubbed, counts = scrub_text(before + secret + after)

    assert scrubbed == before + placeholder(kind) + after
    assert secret not in scrubbed
    assert counts == {kind: 1}


def test_connection_string_keeps_user_and_host() -> None:
    assert scrub_text("postgres://app:Xy7pQ2vLm9@db:5432/x") == (
        "postgres://app:<secret:connection_string_password>@db:5432/x",
        {"connection_string_password": 1},
    )


@pytest.mark.parametrize(
    ("text", "expected", "kind"),
    [
        ('REDIS_URL = "redis://:s3cr3tRedisPw@cache:6379/0"', 'REDIS_URL = "redis://:{}@cache:6379/0"', None),
        ("amqp://guest:Gu3st!pw@rabbit//", "amqp://guest:{}@rabbit//", None),
        ('aws_secret_access_key = "' + AWS_SECRET + '"', 'aws_secret_access_key = "{}"', "aws_secret_key"),
        (
            "[default]\naws_secret_access_key = " + AWS_SECRET + "\n",
            "[default]\naws_secret_access_key = {}\n",
            "aws_secret_key",
        ),
        ("GITHUB_TOKEN=" + GITHUB_PAT + "\n", "GITHUB_TOKEN={}\n", "github_token"),
        ('openai.api_key = "' + OPENAI_LEGACY_KEY + '"', 'openai.api_key = "{}"', "openai_key"),
        ("Authorization: Bearer " + JWT, "Authorization: Bearer {}", "jwt"),
    ],
)
def test_more_shapes(text: str, expected: str, kind: str | None) -> None:
    kind = kind or "connection_string_password"
    assert scrub_text(text) == (expected.format(placeholder(kind)), {kind: 1})


@pytest.mark.parametrize(
    ("text", "expected", "kind"),
    [
        ('password = "hunter2xyz!"', 'password = "{}"', "password"),  # Python
        ('const apiToken = "Zq8mPx2LkW9aB3";', 'const apiToken = "{}";', "token"),  # JavaScript
        ("database:\n  password: hunter2xyz\n  user: app\n", "database:\n  password: {}\n  user: app\n", "password"),
        ('{"secret": "9f8e7d6c5b4a", "region": "eu-west-1"}', '{{"secret": "{}", "region": "eu-west-1"}}', "secret"),
        ("DB_PASSWORD=Sup3rS3cret\nDEBUG=false\n", "DB_PASSWORD={}\nDEBUG=false\n", "password"),  # .env
        ("export DB_PASSWORD=hunter2xyz\n", "export DB_PASSWORD={}\n", "password"),  # shell
        ("secret_key=Zq8mPx2LkW9\n", "secret_key={}\n", "secret"),
        ("ENV POSTGRES_PASSWORD=Sup3rS3cret\n", "ENV POSTGRES_PASSWORD={}\n", "password"),  # Dockerfile
        (
            'def connect(host: str, password: str = "Tr0ub4dor&3"):',
            'def connect(host: str, password: str = "{}"):',
            "password",
        ),
        ('cfg := Config{Password: "Sup3rS3cret"}', 'cfg := Config{{Password: "{}"}}', "password"),  # Go
        ("'password' => 'Sup3rS3cret',", "'password' => '{}',", "password"),  # PHP
        (
            'headers = {"Authorization": "Bearer abcDEF123456ghiJKL789"}',
            'headers = {{"Authorization": "Bearer {}"}}',
            "token",
        ),
        (
            'curl -H "Authorization: Bearer abcDEF123456ghiJKL789" $URL',
            'curl -H "Authorization: Bearer {}" $URL',
            "token",
        ),
        ("GET /v1/items?api_key=Zq8mPx2LkW9aB3&limit=10", "GET /v1/items?api_key={}&limit=10", "api_key"),  # query
        ("mysql --user=app --password=Sup3rS3cret app", "mysql --user=app --password={} app", "password"),  # CLI flag
        (
            "Server=db;Database=app;User Id=app;Password=Sup3rS3cret;",
            "Server=db;Database=app;User Id=app;Password={};",
            "password",
        ),
        ("[client]\nuser = app\npassword = hunter2xyz\n", "[client]\nuser = app\npassword = {}\n", "password"),  # ini
        ("pAsSwOrD = 'Qw3rty!Zx9'", "pAsSwOrD = '{}'", "password"),
        ('if token == "a8F3kQ9zX2mL7pR4":', 'if token == "{}":', "token"),
    ],
)
def test_keyword_assignments_in_many_styles(text: str, expected: str, kind: str) -> None:
    assert scrub_text(text) == (expected.format(placeholder(kind)), {kind: 1})


@pytest.mark.parametrize(
    "text",
    [
        'password = os.environ["DB_PASSWORD"]',
        "token = get_token()",
        "connect(host=host, password=password)",
        "connect(\n    host=host,\n    password=db_password\n)",
        "def login(username: str, password: str) -> Token:",
        "token: str",
        "api_key: SecretStr",
        "auth: Optional[AuthBase] = None",
        'password = ""',
        "password = None",
        "api_key = settings.API_KEY",
        'token = request.headers.get("Authorization")',
        'headers["Authorization"] = f"Bearer {token}"',
        'headers["Authorization"] = "Bearer " + token',
        "export TOKEN=$(cat /run/secrets/token)",
        "password: ${DB_PASSWORD}",
        'password = "{{ vault_db_password }}"',
        "if token == EXPECTED_TOKEN:",
        'if token == "keyword":',
        "token = tokens[0]",
        "password_hash = bcrypt.hashpw(password.encode(), bcrypt.gensalt())",
        "token = secrets.token_urlsafe(32)",
        'password = "changeme"',
        'api_key = "YOUR_API_KEY"',
        'api_key = "your-api-key-here"',
        'password = "<password>"',
        'password = "xxxxxxxx"',
        'password = "********"',
        'password = "abc12"',
        'password = "123456789"',
        'bos_token = "<|begin_of_text|>"',
        'pad_token = "[PAD]"',
        'tokenizer = AutoTokenizer.from_pretrained("meta-llama/Llama-2-7b-hf")',
        "max_tokens = 4096",
        'token_url = "https://oauth2.googleapis.com/token"',
        "PASSWORD_MIN_LENGTH = 12",
        'api_key_header = "X-API-Key"',
        'secret_name = "prod/db/credentials"',
        'TOKEN_ENV = "GITHUB_TOKEN"',
        'token.markup = "autolink"',
        'author = "Jane Doe123"',
        "for token in tokens:\n    pass",
        'DATABASE_URL = f"postgres://{user}:{password}@{host}/db"',
        "DATABASE_URL = postgres://postgres:password@localhost:5432/dev",
        'client = Client("AC' + "x" * 32 + '", auth_token)',
        "password = DB_PASSWORD",
        "password = db_password  # from the vault",
        "per_token_loss = -outputs.log_probs  # zero on ignored positions",
        "# the access token: refreshed_every_hour and cached",
        'IMAGE_TOKEN = "]<]image[>["',
        'middle_token="\u2581<MID>",',
        'entity_mask2_token="[MASK2]",',
        'self.image_newline_token = "|NEWLINE|"',
        'verify_token="eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9...",',
        '"token-classification": "Token Classification",',
        'publicKeyToken="1fc8b3b9a1e18e3b"',
        '"refresh_token": "hf_oauth__refresh_token",',
        'secret="my-secret-name",',
        '"tokenizers": "tokenizers>=0.23.1,<0.24.0",',
        "pass_dict=graph_pass,",
        "    # First pass: decided_mask==0, every element participates.",
        'token_key = "RpcGroupManagementToken"',
        'Token.String: "#D8DEE9",',
        "auth: _t.AuthType",
    ],
)
def test_obvious_non_secrets_are_left_alone(text: str) -> None:
    assert scrub_text(text) == (text, {})


ORDINARY_MODULE = '''"""Session tokens for the web app: issue, verify, revoke."""

import hashlib
import hmac
import secrets
import uuid

from .settings import settings

TOKEN_BYTES = 32
PASSWORD_MIN_LENGTH = 12
LOGO_PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
EMPTY_TREE = "4b825dc642cb6eb9a060e54bf8d69288fbee4904"
DEFAULT_TENANT = uuid.UUID("123e4567-e89b-12d3-a456-426614174000")


def issue_token(user_id: str) -> str:
    token = secrets.token_urlsafe(TOKEN_BYTES)
    store.put(hash_token(token), user_id, ttl=settings.token_ttl)
    return token


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def check_password(password: str, password_hash: str) -> bool:
    if len(password) < PASSWORD_MIN_LENGTH:
        return False
    candidate = hashlib.pbkdf2_hmac("sha256", password.encode(), settings.salt, 100_000).hex()
    return hmac.compare_digest(candidate, password_hash)


def revoke(token: str) -> None:
    for key in sorted(store.keys(), key=lambda k: k.created):
        if key.token == hash_token(token):
            store.delete(key)
'''


def test_ordinary_module_with_token_and_password_names_is_untouched() -> None:
    assert scrub_text(ORDINARY_MODULE) == (ORDINARY_MODULE, {})


@pytest.mark.parametrize(
    "text",
    [
        'EMPTY_TREE = "4b825dc642cb6eb9a060e54bf8d69288fbee4904"  # git SHA',
        "commit 4b825dc642cb6eb9a060e54bf8d69288fbee4904\nAuthor: Ada <ada@example.com>\n",
        'request_id = "123e4567-e89b-12d3-a456-426614174000"',
        '<img src="data:image/png;base64,' + base64.b64encode(random.Random(5).randbytes(3000)).decode() + '">',
        "checksum = '" + "".join(random.Random(6).choice(HEX) for _ in range(64)) + "'",
    ],
    ids=["sha", "git-log", "uuid", "base64-image", "sha256"],
)
def test_ids_hashes_and_blobs_are_left_alone(text: str) -> None:
    assert scrub_text(text) == (text, {})


@pytest.mark.parametrize(
    ("value", "redacted"),
    [
        ("aaaa1111", False),  # two classes, 1.0 bit per char
        ("ab12ab12", False),  # two classes, 2.0 bits
        ("s3cr3t", True),  # two classes, 2.25 bits
        ("hunter2", True),
        ("production", False),  # one class, 3.1 bits
        ("mysecretpassword", False),  # one class, 3.45 bits
        ("qwzxkvbnmjhgfd", True),  # one class, 3.8 bits
        ("QWZXKVBNMJHGFDSA", False),  # all capitals reads as a constant's name, not a secret
        ("Tr0ub4dor&3", True),
    ],
)
def test_entropy_threshold_on_both_sides(value: str, redacted: bool) -> None:
    text = f'password = "{value}"'
    expected = ('password = "<secret:password>"', {"password": 1}) if redacted else (text, {})
    assert scrub_text(text) == expected


def test_entropy_helper() -> None:
    assert keywords._shannon_entropy("xxxxxxxx") == 0
    assert keywords._shannon_entropy("abcd") == pytest.approx(2.0)
    assert keywords._shannon_entropy("hunter2xyz!") == pytest.approx(3.459, abs=1e-3)


def _body(lines: int = 4) -> list[str]:
    return [fake(64, BASE64) for _ in range(lines)]


@pytest.mark.parametrize(
    ("before", "key", "after"),
    [
        ("key = '''", RSA_KEY, "'''\n"),
        ("# no END line\n", pem("EC", end=False), "\n\nprint('done')\n"),
        ("", pem("OPENSSH"), "\n"),
        ("", pem("ENCRYPTED"), "\n"),
        ("", pem(""), "\n"),
        (
            '{"type": "service_account", "private_key": "',
            pem("").replace("\n", "\\n"),
            '\\n", "client_email": "svc@proj.iam.gserviceaccount.com"}',
        ),
        (
            '{"private_key": "',
            pem("", end=False).replace("\n", "\\n"),
            '", "client_email": "svc@proj.iam.gserviceaccount.com"}',
        ),
        (
            'KEY = (\n    "',
            "-----BEGIN RSA " + 'PRIVATE KEY-----\\n"\n    "' + '\\n"\n    "'.join(_body()),
            '\\n"\n)\nx = 1\n',
        ),
        (
            "",
            "-----BEGIN PGP " + "PRIVATE KEY BLOCK-----\nVersion: GnuPG v2\n\n" + "\n".join(_body()) + "\n=n8Jx\n"
            "-----END PGP " + "PRIVATE KEY BLOCK-----",
            "\n",
        ),
        (
            "",
            "-----BEGIN RSA "
            + "PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,3F17F5316E2BAC89\n\n"
            + "\n".join(_body()),
            "\n\ndef main():\n    pass\n",
        ),
        (
            "",
            "PuTTY-User-"
            + "Key-File-2: ssh-rsa\nEncryption: none\nComment: imported\nPublic-Lines: 2\n"
            + "\n".join(_body(2))
            + "\nPrivate-Lines: 2\n"
            + "\n".join(_body(2))
            + "\nPrivate-MAC: "
            + fake(40, HEX),
            "\n",
        ),
    ],
    ids=[
        "multiline",
        "truncated",
        "openssh",
        "pkcs8-encrypted",
        "pkcs8",
        "json",
        "json-truncated",
        "py-concat-truncated",
        "pgp",
        "encrypted-pem-truncated",
        "putty",
    ],
)
def test_private_key_blocks_are_redacted_whole(before: str, key: str, after: str) -> None:
    scrubbed, counts = scrub_text(before + key + after)

    assert scrubbed == before + placeholder("private_key") + after
    assert counts == {"private_key": 1}


def test_every_private_key_header_detect_secrets_knows_is_covered() -> None:
    for header in (pattern.pattern for pattern in PrivateKeyDetector.denylist):
        if header.startswith("PuTTY"):
            continue
        dashes = "----" if "SSH2" in header else "-----"
        pad = " " if "SSH2" in header else ""
        block = f"{dashes}{pad}{header}{pad}{dashes}\n" + "\n".join(_body(2))
        assert scrub_text(block) == (placeholder("private_key"), {"private_key": 1}), header


def test_multiple_secrets_are_counted_separately() -> None:
    text = (
        "AWS_ACCESS_KEY_ID=" + AWS_KEY_ID + "\n"
        "AWS_SECRET_ACCESS_KEY=" + AWS_SECRET + "\n"
        "DB_PASSWORD=Sup3rS3cret\n"
        "REDIS_PASSWORD=R3d1s!pw99\n"
        "GITHUB_TOKEN=" + GITHUB_TOKEN + "\n"
        "BACKUP_TOKEN=" + GITHUB_TOKEN[:-1] + "Q\n"
        "DEBUG=true\n"
    )
    scrubbed, counts = scrub_text(text)

    assert counts == {"aws_access_key": 1, "aws_secret_key": 1, "password": 2, "github_token": 2}
    assert scrubbed.splitlines() == [
        "AWS_ACCESS_KEY_ID=<secret:aws_access_key>",
        "AWS_SECRET_ACCESS_KEY=<secret:aws_secret_key>",
        "DB_PASSWORD=<secret:password>",
        "REDIS_PASSWORD=<secret:password>",
        "GITHUB_TOKEN=<secret:github_token>",
        "BACKUP_TOKEN=<secret:github_token>",
        "DEBUG=true",
    ]


POSITIVE_TEXTS = [before + secret + after for _, before, secret, after in KIND_EXAMPLES]


@pytest.mark.parametrize("text", [*POSITIVE_TEXTS, "\n".join(POSITIVE_TEXTS)])
def test_scrubbing_is_idempotent(text: str) -> None:
    scrubbed, counts = scrub_text(text)
    assert counts
    assert scrub_text(scrubbed) == (scrubbed, {})


@pytest.mark.parametrize(
    "text",
    [
        "# Grüße aus München: ¿qué tal? naïve café résumé\n",
        "# 日本語のコメント：トークンを更新する\ndef 更新(トークン):\n    return トークン\n",
        "msg = '🔑 password reset sent ✅'  # emoji\n",
        "city = 'İstanbul'  # İ grows when lower-cased\nstraße = 'Kelvin: \u212a, long s: \u017f'\n",
        "Ελληνικά: κωδικός πρόσβασης = μυστικό\n",
    ],
)
def test_unicode_text_is_untouched(text: str) -> None:
    assert scrub_text(text) == (text, {})


def test_secrets_inside_unicode_text_keep_their_surroundings() -> None:
    # "İ" lower-cases to two characters, so this also covers the path where offsets in the lower-cased
    # text no longer line up with the original.
    text = f"# İstanbul ofisi 日本 🔑\npassword = 'hunter2xyz!'  # şifre\ntoken = \"{GITHUB_TOKEN}\"\nİ = 1\n"
    assert scrub_text(text) == (
        "# İstanbul ofisi 日本 🔑\npassword = '<secret:password>'  # şifre\ntoken = \"<secret:github_token>\"\nİ = 1\n",
        {"password": 1, "github_token": 1},
    )


def test_empty_text_and_version() -> None:
    assert scrub_text("") == ("", {})
    assert isinstance(SCRUB_VERSION, str) and SCRUB_VERSION


# --- The prefilter must never hide a secret that the detectors would find. ---

EXTRA_POSITIVES = [
    "GITHUB_TOKEN=" + GITHUB_PAT,
    'openai.api_key = "' + OPENAI_LEGACY_KEY + '"',
    "stripe_key = 'rk_" + "test_" + fake(24) + "'",
    "TWILIO_API_KEY=SK" + fake(32, HEX),
    "gl-deploy: " + "GR1348941" + fake(20, URLSAFE),
    "PuTTY-User-" + "Key-File-3: ssh-ed25519\nEncryption: none\n" + "\n".join(_body(2)),
    "Server=db;Uid=app;Pwd=Sup3rS3cret;",
    "x-api-key: Zq8mPx2LkW9aB3cD",
    "Authorization: Bearer abcDEF123456ghiJKL789",
    "DB_PASS=Sup3rS3cret",
    "smtp://mailer:Xy7pQ2vLm9@smtp.example.com:587",
]


def _detections(text: str) -> dict[str, list[tuple[int, int, str]]]:
    lowered = text.lower()
    return {detector.name: list(detector.find(text, lowered)) for detector in prefilter._DETECTORS}


@pytest.mark.parametrize("text", POSITIVE_TEXTS + EXTRA_POSITIVES)
def test_every_detection_is_preceded_by_its_anchors(text: str) -> None:
    lowered = text.lower()
    fired = prefilter._fired_detectors(text, lowered)
    found_any = False
    for bit, (name, spans) in enumerate(_detections(text).items()):
        if spans:
            found_any = True
            assert fired >> bit & 1, f"the prefilter did not fire {name}, which finds {spans}"
    assert found_any
    assert scrub_text(text) == prefilter._scrub(text, lowered, ALL_DETECTORS)


def _flip_case(text: str, rng: random.Random) -> str:
    return "".join(c.upper() if rng.random() < 0.3 else c for c in text)


def test_prefilter_agrees_with_running_every_detector_on_random_mixtures() -> None:
    rng = random.Random(99)
    fragments = POSITIVE_TEXTS + EXTRA_POSITIVES + [ORDINARY_MODULE, "password: ", "token=", "://u:", "eyJ", "İ", "ß"]
    noise = string.ascii_letters + string.digits + " \n\t=:'\"-_./+@"
    for _ in range(300):
        parts = []
        for _ in range(rng.randint(1, 6)):
            fragment = rng.choice(fragments)
            start = rng.randrange(len(fragment))
            part = fragment[start : start + rng.randint(1, 400)]
            parts.append(_flip_case(part, rng) if rng.random() < 0.3 else part)
            parts.append("".join(rng.choice(noise) for _ in range(rng.randint(0, 20))))
        text = "".join(parts)
        assert scrub_text(text) == prefilter._scrub(text, text.lower(), ALL_DETECTORS), text


def test_anchors_expand_to_the_literals_they_start_with() -> None:
    assert prefilter._anchor_literals("gh[pousr]_") == (["gho_", "ghp_", "ghr_", "ghs_", "ghu_"], True)
    assert prefilter._anchor_literals("A(?:KIA|3T)") == (["A3T", "AKIA"], True)
    assert prefilter._anchor_literals(r"sg\.") == (["sg."], True)
    # More than its literals: the whole anchor is checked where a literal occurs.
    assert prefilter._anchor_literals("key(?<=[a-z0-9_-]key)") == (["key"], False)
    assert prefilter._anchor_literals("SK[a-z0-9]{32}") == (["SK"], False)
    for bad in ("[a-z]{3}", "k[a-z0-9]{32}", "(ab)c", "a|bc"):  # no literal start of 2+ characters, or a group
        with pytest.raises(ValueError):
            prefilter._build_prefilters((prefilter._Detector("bad", lambda text, lowered: [], anchors=(bad,)),))


def _bit(name: str) -> int:
    return 1 << [detector.name for detector in prefilter._DETECTORS].index(name)


def test_prefilter_sees_anchors_that_overlap_or_fail_their_check() -> None:
    # "AKIA" ends inside "AC...": both occur, so both the AWS and the Twilio detectors run.
    text = "AKIAC" + "0123456789abcdef" * 2
    fired = prefilter._fired_detectors(text, text.lower())
    assert fired & _bit("aws_access_key_0") and fired & _bit("twilio_key_18")
    # A "key" that its check refuses (no name character before it) fires nothing; the compound one fires.
    assert not prefilter._fired_detectors("sorted(x, key=len)", "sorted(x, key=len)") & _bit("keyword_key")
    assert prefilter._fired_detectors("x = api_key", "x = api_key") & _bit("keyword_key")


# --- Worst case: long lines stay linear. ---


def _seconds_to_scrub(text: str) -> float:
    started = time.perf_counter()
    scrub_text(text)
    return time.perf_counter() - started


def test_long_line_of_one_character_is_fast() -> None:
    assert _seconds_to_scrub("a" * 200_000) < 0.5


def test_long_line_of_random_base64_is_fast() -> None:
    assert _seconds_to_scrub(base64.b64encode(random.Random(7).randbytes(150_000)).decode()[:200_000]) < 0.5


@pytest.mark.parametrize(
    "unit",
    [
        "eyJ",
        "sk-",
        "xoxb-1-",
        "glpat-",
        "AKIA",
        "aws key '",
        "ghp_",
        "://a:",
        "-----BEGIN RSA " + "PRIVATE KEY-----\n",
        "key",
        "password=",
        "'password': '",
        "Authorization: Bearer ",
        "pypi-" + "AgEIcHlwaS5vcmc",
        "\\n",
    ],
)
def test_repeated_detector_prefixes_are_fast(unit: str) -> None:
    # Every occurrence is a match attempt and some are matches, so this is slower than the lines above; the
    # limit is generous for a loaded machine, while a quadratic regex takes from several seconds to minutes.
    assert _seconds_to_scrub((unit * (200_000 // len(unit) + 1))[:200_000]) < 2.0


# --- The prefilter over many texts at once (how ingest scrubs an event). ---


def test_texts_scanned_together_flag_every_secret_any_of_them_holds() -> None:
    clean = ["def add(a, b):\n    return a + b\n", "python", "src/app/math_utils.py"]
    assert not scrub.may_hold_secrets(clean)
    for text in POSITIVE_TEXTS + EXTRA_POSITIVES:
        for position in range(len(clean) + 1):
            assert scrub.may_hold_secrets([*clean[:position], text, *clean[position:]]), text


def test_a_text_that_starts_with_an_anchor_is_judged_alone_as_in_a_group() -> None:
    # `key` counts only inside a compound (api_key), and a text's start is no compound, alone or joined.
    assert scrub.may_hold_secrets(["key = 1"]) == scrub.may_hold_secrets(["x = 0", "key = 1"]) is False
    assert scrub.may_hold_secrets(["api_key = 1"]) and scrub.may_hold_secrets(["x = 0", "api_key = 1"])


def test_prefilter_over_groups_agrees_with_scrubbing_each_text() -> None:
    rng = random.Random(7)
    fragments = POSITIVE_TEXTS + EXTRA_POSITIVES + [ORDINARY_MODULE, "password: ", "token=", "://u:", "eyJ", "İ", "ß"]
    for _ in range(300):
        texts = []
        for _ in range(rng.randint(1, 5)):
            fragment = rng.choice(fragments)
            start = rng.randrange(len(fragment))
            texts.append(fragment[start : start + rng.randint(1, 200)])
        if not scrub.may_hold_secrets(texts):
            assert all(scrub_text(text) == (text, {}) for text in texts), texts
