#!/usr/bin/env python3
"""Reference token ids for the tokenizer tests, from Hugging Face's own Python stack.

transformers' GGUF tokenizer conversion (AutoTokenizer.from_pretrained(dir, gguf_file=...)) is the
independent reference: it rebuilds the tokenizer from the GGUF with its own code, and Python
`tokenizers` (Rust) encodes with it. This writes, under test/fixtures/:

  tokenizer-smollm2-hf.json.gz          the tokenizer.json transformers built (gzipped: ~3.5 MB raw)
  tokenizer-smollm2-gguf-meta.json.gz   the GGUF's tokenizer.* metadata, read with the `gguf` package,
                                        so CI can build our GGUF tokenizer without the 98 MB file
  tokenizer-smollm2-ids.json            corpus, expected ids and decodes, transformers' config,
                                        and chat-template renderings. "ids" come from transformers'
                                        conversion; "ids_gguf" is added where the model's own
                                        pre-tokenizer (which llama.cpp's tokenizer.ggml.pre names,
                                        and transformers ignores for "smollm") gives other ids;
                                        "ids_pre" where other pre types (llama-bpe, qwen2) would

Run (venv with tokenizers, transformers, gguf; torch is not needed):
  .cache/peers/venv/bin/python scripts/reference/tokenizer_ids.py [--gguf PATH]

Check that a directory of tokenizer files our code wrote (what `mlx convert` writes beside the
weights) loads in tokenizers, transformers and mlx-lm and reproduces the expected ids and chats:
  node_modules/.bin/bun -e '
    import { gunzipSync } from "node:zlib"; import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
    import { tokenizerFilesFromGGUF } from "./src/tokenizer/gguf";
    const meta = JSON.parse(gunzipSync(readFileSync("test/fixtures/tokenizer-smollm2-gguf-meta.json.gz")).toString());
    const { tokenizerJson, tokenizerConfig } = tokenizerFilesFromGGUF(meta);
    mkdirSync("/tmp/tokdir", { recursive: true });
    writeFileSync("/tmp/tokdir/tokenizer.json", JSON.stringify(tokenizerJson));
    writeFileSync("/tmp/tokdir/tokenizer_config.json", JSON.stringify(tokenizerConfig));'
  .cache/peers/venv/bin/python scripts/reference/tokenizer_ids.py --check-dir /tmp/tokdir

Check the GGUF expectations against llama.cpp itself (any Python with llama-cpp-python):
  python scripts/reference/tokenizer_ids.py --check-llama-cpp [--gguf PATH]
"""

import argparse
import gzip
import json
import os
import sys
import tempfile
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "test" / "fixtures"
DEFAULT_GGUF = ROOT / ".cache" / "dev" / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _long_text():
    """A few KB of varied prose, code and numbers, deterministic."""
    parts = []
    for i in range(40):
        parts.append(
            f"Paragraph {i}: The quick brown fox (n°{i * 37 % 101}) jumps over the lazy dog; "
            f"café déjà vu — naïve coöperation. 東京{i}年、🦊×{i % 7}!\n"
            f"    def f_{i}(x):\n        return x ** {i % 5} + {i * 1.5}\t# comment\n\n"
        )
    return "".join(parts)


CORPUS = [
    "",
    "Hello world",
    "Hello, world! How are you today?",
    " leading space",
    "   three leading spaces",
    "trailing spaces   ",
    "a  b   c    d",
    "\n",
    "\n\n\n",
    "line one\nline two\n\nline four\n",
    "tabs\there\t\tand\t\t\tthere",
    "windows\r\nline\r\nendings\r\n",
    " \t \n mixed \n\t whitespace \t\n",
    "I'm sure you're right, it's what we've said: they'll go, I'd stay. DON'T SHOUT, He'S",
    "1234567890",
    "3.14159 2.71828 1,000,000 -42 +7 1e-9 0x1F",
    "In 2024, 15% of 300 people paid $19.99 (≈ €18.50).",
    "٣٤٥ ²³ ½ Ⅻ ① 10² ۱۲۳",
    "Café, naïve, résumé, Ångström, Zürich, São Paulo, Łódź, İstanbul",
    "e\u0301 vs \u00e9 (combining vs precomposed)",
    "Привет, мир! Как дела?",
    "Γειά σου Κόσμε",
    "مرحبا بالعالم",
    "שלום עולם",
    "नमस्ते दुनिया",
    "สวัสดีชาวโลก",
    "你好，世界！今天天气很好。",
    "こんにちは世界、カタカナとひらがな",
    "안녕하세요 세계",
    "Emoji: 😀 👍🏽 👨‍👩‍👧‍👦 🇫🇷 🇯🇵 🤖 ❤️ 🫠",
    "🦊🦊🦊",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝕞𝕒𝕥𝕙 𝟙𝟚𝟛",
    "zero\u200bwidth\u00a0nbsp\u3000ideographic\u2028sep",
    "control \x07 bell \x1b[31mred\x1b[0m \x00 nul \x7f del",
    "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n",
    "const x = { a: [1, 2, 3], b: \"str\" };\nconsole.log(x?.a ?? []);",
    '{"key": "value", "nested": {"list": [true, false, null]}}',
    "<div class=\"x\">Hello &amp; goodbye</div>",
    "SELECT * FROM users WHERE id = 42 AND name LIKE '%bob%';",
    "https://example.com/path?query=1&other=two#frag user@example.org",
    "# Title\n\n- item **bold** _it_ `code`\n\n```python\nprint('hi')\n```\n",
    "if (a != b && c >= d || e <= f) { return a->b; } // ===",
    "<|im_start|>user\nHello!<|im_end|>\n<|im_start|>assistant\n",
    "text<|endoftext|>more text",
    "<|im_start|><|im_start|><|im_end|>",
    "<|im_sta rt|> and < |im_end| > are not special",
    "<repo_name>owner/repo<file_sep>main.py<filename>x",
    "spaces before special   <|im_end|>   and after",
    "The end.",
    _long_text(),
]

CONVERSATIONS = [
    {"messages": [{"role": "user", "content": "Hello!"}], "add_generation_prompt": True},
    {
        "messages": [
            {"role": "system", "content": "You are a pirate."},
            {"role": "user", "content": "What is 2+2?"},
        ],
        "add_generation_prompt": True,
    },
    {
        "messages": [
            {"role": "user", "content": "Bonjour, ça va ? 🇫🇷"},
            {"role": "assistant", "content": "Très bien, merci !"},
            {"role": "user", "content": "Écris un haïku.\nMerci."},
        ],
        "add_generation_prompt": True,
    },
    {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello."},
        ],
        "add_generation_prompt": False,
    },
]


def model_pre_tokenizer(pre_type: str):
    """The pre-tokenizer of the model's own tokenizer.json, for GGUF pre types where transformers'
    conversion falls back to plain GPT-2 splitting. SmolLM2's tokenizer.json (HuggingFaceTB/
    SmolLM2-*) splits every Unicode number character off first (Digits, individual_digits), which is
    what llama.cpp's "smollm" pre type ("\\p{N}" then the GPT-2 regex) reproduces. transformers
    ignores "smollm", so the two differ on text like " ²" or "٣٤".
    """
    from tokenizers import pre_tokenizers

    if pre_type in ("smollm", "starcoder"):
        return pre_tokenizers.Sequence(
            [
                pre_tokenizers.Digits(individual_digits=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
            ]
        )
    return None


# Other GGUF pre types, checked on this vocabulary with transformers' own split patterns, so the
# regex translation of tokenizers.js is held to Rust's for them too. llama.cpp also uses a word
# whole when the vocabulary has it for llama3 ("ignore_merges"); transformers leaves that out.
PRE_VARIANTS = {"llama-bpe": {"ignore_merges": True}, "qwen2": {"ignore_merges": False}}


def pre_variant_tokenizer(hf_json: str, pre_type: str):
    from tokenizers import Regex, Tokenizer, pre_tokenizers
    from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS

    spec = json.loads(hf_json)
    spec["model"]["ignore_merges"] = PRE_VARIANTS[pre_type]["ignore_merges"]
    tok = Tokenizer.from_str(json.dumps(spec))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(GGUF_PRE_TOKENIZER_SPLITS[pre_type]), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    return tok


def _allow_gguf_without_torch():
    """transformers imports torch in its GGUF reader even to read only metadata. Reading the
    tokenizer needs no tensors, so when torch is absent stand in a placeholder module."""
    try:
        import torch  # noqa: F401

        return
    except ImportError:
        pass
    import transformers  # noqa: F401  (decides torch availability before the stub exists)
    import transformers.modeling_gguf_pytorch_utils as gguf_utils

    class _Anything:
        def __init__(self, *args, **kwargs):
            pass

        def __call__(self, *args, **kwargs):
            return _Anything()

        def __getattr__(self, name):
            return _Anything()

        def __getitem__(self, key):
            return _Anything()

    torch = types.ModuleType("torch")
    torch.__getattr__ = lambda name: _Anything
    sys.modules["torch"] = torch
    gguf_utils.is_torch_available = lambda: True


def load_reference_tokenizer(gguf_path: Path):
    _allow_gguf_without_torch()
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)


def gguf_tokenizer_metadata(gguf_path: Path) -> dict:
    """The metadata our GGUF tokenizer builder reads, via llama.cpp's own `gguf` package."""
    from gguf import GGUFReader

    reader = GGUFReader(str(gguf_path))
    arch = reader.fields["general.architecture"].contents()
    wanted = lambda k: k.startswith("tokenizer.") or k in ("general.architecture", f"{arch}.context_length")
    meta = {}
    for key, field in reader.fields.items():
        if wanted(key):
            value = field.contents()
            meta[key] = value.tolist() if hasattr(value, "tolist") else value
    return meta


def write_gz_json(path: Path, obj) -> None:
    data = json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    # mtime=0 keeps the file byte-identical between runs.
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=9, mtime=0) as gz:
        gz.write(data)


def one_item_per_line(fixture: dict) -> str:
    """JSON with each case and chat on its own line: readable diffs without a line per id."""
    dump = lambda value: json.dumps(value, ensure_ascii=False)
    lines = []
    for key, value in fixture.items():
        if isinstance(value, list):
            items = ",\n  ".join(dump(item) for item in value)
            lines.append(f"{dump(key)}: [\n  {items}\n ]")
        else:
            lines.append(f"{dump(key)}: {dump(value)}")
    return "{\n " + ",\n ".join(lines) + "\n}\n"


def generate(gguf_path: Path) -> None:
    from tokenizers import Tokenizer

    tok = load_reference_tokenizer(gguf_path)
    with tempfile.TemporaryDirectory() as tmp:
        tok.save_pretrained(tmp)
        hf_json = (Path(tmp) / "tokenizer.json").read_text(encoding="utf-8")
        hf_config = json.loads((Path(tmp) / "tokenizer_config.json").read_text(encoding="utf-8"))
        template_file = Path(tmp) / "chat_template.jinja"
        if template_file.exists():
            hf_config["chat_template"] = template_file.read_text(encoding="utf-8")
    for machine_specific in ("is_local", "local_files_only", "name_or_path"):
        hf_config.pop(machine_specific, None)

    FIXTURES.mkdir(parents=True, exist_ok=True)
    hf_path = FIXTURES / "tokenizer-smollm2-hf.json"
    if len(hf_json.encode("utf-8")) > 3_000_000:
        hf_path = hf_path.with_suffix(".json.gz")
        write_gz_json(hf_path, json.loads(hf_json))
    else:
        hf_path.write_text(hf_json, encoding="utf-8")
    write_gz_json(FIXTURES / "tokenizer-smollm2-gguf-meta.json.gz", gguf_tokenizer_metadata(gguf_path))

    # Python `tokenizers` on the saved JSON is what we compare against; transformers must agree.
    rust = Tokenizer.from_str(hf_json)
    # The same tokenizer with the model's own pre-tokenizer: what a GGUF loader that honours
    # tokenizer.ggml.pre (llama.cpp, ours) must produce. Same ids wherever transformers is right.
    meta = gguf_tokenizer_metadata(gguf_path)
    faithful = Tokenizer.from_str(hf_json)
    pre = model_pre_tokenizer(meta.get("tokenizer.ggml.pre", "default"))
    if pre is not None:
        faithful.pre_tokenizer = pre
    variants = {pre_type: pre_variant_tokenizer(hf_json, pre_type) for pre_type in PRE_VARIANTS}
    cases = []
    for text in CORPUS:
        ids = rust.encode(text, add_special_tokens=True).ids
        assert ids == tok(text)["input_ids"], f"tokenizers and transformers disagree on {text!r}"
        case = {
            "text": text,
            "ids": ids,
            "decoded": rust.decode(ids, skip_special_tokens=False),
            "decoded_skip_special": rust.decode(ids, skip_special_tokens=True),
        }
        gguf_ids = faithful.encode(text, add_special_tokens=True).ids
        if gguf_ids != ids:
            case["ids_gguf"] = gguf_ids  # only where transformers' conversion differs
        for pre_type, variant in variants.items():
            variant_ids = variant.encode(text, add_special_tokens=True).ids
            if variant_ids != gguf_ids:  # only where the split rules make a difference
                case.setdefault("ids_pre", {})[pre_type] = variant_ids
        cases.append(case)
    chats = [
        dict(conv, expected=tok.apply_chat_template(conv["messages"], tokenize=False, add_generation_prompt=conv["add_generation_prompt"]))
        for conv in CONVERSATIONS
    ]
    import tokenizers
    import transformers

    fixture = {
        "source": f"{gguf_path.name} via transformers {transformers.__version__} GGUF conversion, tokenizers {tokenizers.__version__}",
        "hf_tokenizer_file": hf_path.name,
        "hf_tokenizer_config": hf_config,
        "cases": cases,
        "chats": chats,
    }
    ids_path = FIXTURES / "tokenizer-smollm2-ids.json"
    ids_path.write_text(one_item_per_line(fixture), encoding="utf-8")
    for path in (hf_path, FIXTURES / "tokenizer-smollm2-gguf-meta.json.gz", ids_path):
        print(f"wrote {path.relative_to(ROOT)} ({path.stat().st_size:,} bytes)")


def check_dir(directory: Path) -> None:
    """Loads a tokenizer directory three ways and compares with the committed expectations."""
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer
    from mlx_lm.tokenizer_utils import load as mlx_lm_load

    fixture = json.loads((FIXTURES / "tokenizer-smollm2-ids.json").read_text(encoding="utf-8"))
    rust = Tokenizer.from_file(str(directory / "tokenizer.json"))
    hf = AutoTokenizer.from_pretrained(str(directory))
    wrapper = mlx_lm_load(directory)
    failures = 0
    stream_notes = 0
    for case in fixture["cases"]:
        # A directory built from the GGUF honours tokenizer.ggml.pre, so "ids_gguf" where given.
        text, want = case["text"], case.get("ids_gguf", case["ids"])
        for name, got in (
            ("tokenizers", rust.encode(text).ids),
            ("transformers", hf(text)["input_ids"]),
            ("mlx-lm", wrapper.encode(text)),
        ):
            if got != want:
                failures += 1
                print(f"MISMATCH {name} {text[:40]!r}: {got[:12]} != {want[:12]}")
        if hf.decode(want) != case["decoded"]:
            failures += 1
            print(f"DECODE MISMATCH {text[:40]!r}")
        # mlx-lm's own streaming detokenizer, for information: it drops the first token's leading
        # space and has byte-table quirks, so it is not held to the full decode.
        detok = wrapper.detokenizer
        detok.reset()
        for i in want:
            detok.add_token(i)
        detok.finalize()
        if detok.text != case["decoded"]:
            stream_notes += 1
            print(f"note: mlx-lm streaming differs from decode on {text[:40]!r}: {detok.text[:40]!r}")
    for chat in fixture["chats"]:
        got = hf.apply_chat_template(chat["messages"], tokenize=False, add_generation_prompt=chat["add_generation_prompt"])
        if got != chat["expected"]:
            failures += 1
            print(f"CHAT MISMATCH {got!r} != {chat['expected']!r}")
    print(f"{type(hf).__name__}, mlx-lm detokenizer {type(wrapper.detokenizer).__name__}, eos {sorted(wrapper.eos_token_ids)}")
    print(f"{len(fixture['cases'])} texts, {len(fixture['chats'])} chats: {failures} mismatches ({stream_notes} mlx-lm streaming notes)")
    sys.exit(1 if failures else 0)


def check_llama_cpp(gguf_path: Path) -> None:
    """Holds the committed expectations to llama.cpp's own tokenizer (needs only llama-cpp-python):
    for a GGUF, the ids our builder must give are llama.cpp's, "ids_gguf" where present."""
    from llama_cpp import Llama

    llm = Llama(str(gguf_path), vocab_only=True, verbose=False)
    fixture = json.loads((FIXTURES / "tokenizer-smollm2-ids.json").read_text(encoding="utf-8"))
    failures = 0
    for case in fixture["cases"]:
        text, want = case["text"], case.get("ids_gguf", case["ids"])
        got = llm.tokenize(text.encode("utf-8"), add_bos=False, special=True) if text else []
        detokenized = llm.detokenize(want, special=True).decode("utf-8", errors="replace")
        if got != want or detokenized != case["decoded"]:
            failures += 1
            print(f"MISMATCH {text[:40]!r}: {got[:12]} vs {want[:12]}; {detokenized[:40]!r}")
    print(f"llama.cpp: {len(fixture['cases'])} texts, {failures} mismatches")
    sys.exit(1 if failures else 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gguf", type=Path, default=Path(os.environ.get("MLX_TEST_GGUF", DEFAULT_GGUF)))
    parser.add_argument("--check-dir", type=Path, help="verify a tokenizer directory instead of generating fixtures")
    parser.add_argument("--check-llama-cpp", action="store_true", help="verify the expected ids with llama-cpp-python")
    args = parser.parse_args()
    if args.check_llama_cpp:
        check_llama_cpp(args.gguf)
    elif args.check_dir:
        check_dir(args.check_dir)
    else:
        generate(args.gguf)


if __name__ == "__main__":
    main()
