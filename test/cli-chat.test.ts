// `mlx chat` in a real terminal: the executable runs in a tmux pane (a pseudo-terminal),
// driven with keystrokes and read back from the screen. Uses a tiny random-weight model.
import { afterAll, afterEach, beforeAll, describe, expect, test } from "bun:test";
import {
  closeSync,
  constants,
  existsSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readFileSync,
  statSync,
  truncateSync,
  writeFileSync,
  writeSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { writeTinyModel } from "./helpers/tiny-model";
import { writeScriptedModel } from "./helpers/scripted-model";
import { cliRunner } from "./helpers/cli";
import { startServe } from "./helpers/serve";

const hasTmux = Bun.spawnSync(["which", "tmux"]).exitCode === 0;
const root = mkdtempSync(join(tmpdir(), "mlx-chat-"));
const model = join(root, "tiny");
const home = join(root, "home");
/** `mlx chat` with its stdin piped: what it writes, and its status. */
const chatCli = (args: string[], stdin: string) => cliRunner(home)(["chat", ...args], stdin);
const session = `mlx-chat-test-${process.pid}`;
const main = join(import.meta.dir, "..", "src", "main.ts");
// The compiled executable when setup built it (as users run it), else the same code from source.
const executable = join(import.meta.dir, "..", "dist", "mlx");
const mlxCommand = existsSync(executable) ? `'${executable}'` : `'${process.execPath}' '${main}'`;

const tmux = (...args: string[]) => Bun.spawnSync(["tmux", ...args], { stderr: "pipe" });
const screen = () => tmux("capture-pane", "-p", "-t", session).stdout.toString();
const keys = (...k: string[]) => tmux("send-keys", "-t", session, ...k);
const alive = () => tmux("has-session", "-t", session).exitCode === 0;
/** Keys written at once (a paste without its markers): the chat reads them in one read. */
const oneRead = (text: string) => {
  tmux("set-buffer", "-b", session, text);
  tmux("paste-buffer", "-r", "-b", session, "-t", session);
};

/** An MLX_HOME `dir` (under root) whose models.toml has `far`: model `model` of the server at `url`. */
function remoteHomeOf(dir: string, url: string, model: string): string {
  const home = join(root, dir);
  mkdirSync(home, { recursive: true });
  writeFileSync(
    join(home, "models.toml"),
    `[models.far]\nprovider = "openai"\nbase_url = "${url}/v1"\nmodel = "${model}"\n`,
  );
  return home;
}

/** Waits until the screen matches, or fails after `ms`. */
async function waitFor(pattern: RegExp, ms = 20_000): Promise<string> {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    const text = screen();
    if (pattern.test(text)) return text;
    await Bun.sleep(100);
  }
  throw new Error(`screen never matched ${pattern}:\n${screen()}`);
}

const promptCount = (text: string) => text.split("\n").filter((l) => l.startsWith(">>>")).length;

describe.skipIf(!hasTmux)("mlx chat in a terminal", () => {
  beforeAll(() => {
    // A context long enough that an answer cannot fill it before the Ctrl-C test stops it.
    writeTinyModel(model, { contextLength: 8192 });
    const command = `MLX_HOME='${home}' NO_COLOR=1 ${mlxCommand} chat -m '${model}' --max-tokens 100000 --temp 1 --seed 3 --stats`;
    tmux("new-session", "-d", "-s", session, "-x", "150", "-y", "50", command);
  });

  afterAll(() => {
    if (alive()) tmux("kill-session", "-t", session);
  });

  test("greets, answers a typed message, and comes back to the prompt", async () => {
    await waitFor(/chatting with .*\/help/);
    await waitFor(/^>>>\s*$/m);
    keys("/set max_tokens 12", "Enter");
    await waitFor(/max_tokens = 12/);
    keys("hello there", "Enter");
    const text = await waitFor(/>>> hello there\n[\s\S]+\n>>>\s*$/m);
    expect(promptCount(text)).toBe(3);
  });

  test("a bracketed paste of several lines is one message", async () => {
    tmux("set-buffer", "-b", session, "pasted one\npasted two");
    tmux("paste-buffer", "-p", "-b", session, "-t", session);
    await waitFor(/>>> pasted one↵pasted two/);
    keys("Enter");
    const text = await waitFor(/>>> pasted one↵pasted two\n[\s\S]*tokens\/s[^\n]*\n>>>\s*$/m);
    expect(text).not.toMatch(/>>> pasted two/);
    // Pasted code that opens with a comment is a message too, not an unknown command.
    tmux("set-buffer", "-b", session, "// pasted code\nrun()");
    tmux("paste-buffer", "-p", "-b", session, "-t", session);
    await waitFor(/>>> \/\/ pasted code↵run\(\)/);
    keys("Enter");
    const code = await waitFor(/>>> \/\/ pasted code↵run\(\)\n[\s\S]*tokens\/s[^\n]*\n>>>\s*$/m);
    expect(code).not.toContain("unknown command");
  });

  test("a paste that reaches the chat in several reads, cut inside a character and inside its end marker, is one message", async () => {
    keys("-l", "\x1b[200~");
    keys("-H", "63", "61", "66", "c3"); // "caf" and the first byte of "é"
    await Bun.sleep(300); // each piece a read of its own
    keys("-H", "a9");
    keys("-l", " split\nover reads\x1b[20");
    await Bun.sleep(300);
    keys("-l", "1~");
    await waitFor(/>>> café split↵over reads$/m);
    // The paste has ended: Enter sends it (before, the chat stayed pasting and Enter added a line).
    keys("Enter");
    await waitFor(/>>> café split↵over reads\n[\s\S]*tokens\/s[^\n]*\n>>>\s*$/m);
  });

  test("a pasted line wider than the terminal is drawn again in its place when edited, not a row below its start", async () => {
    keys("C-l");
    const long = Array.from({ length: 40 }, (_, i) => `word${i}`).join(" "); // two rows of the pane's 150 columns
    tmux("set-buffer", "-b", session, long);
    tmux("paste-buffer", "-p", "-b", session, "-t", session);
    await waitFor(/word39$/m);
    keys("Home");
    keys("X");
    // Before, readline had not counted the rows the paste took: it drew the line again one row
    // too low, and the line's first row stayed on the screen above it.
    const text = await waitFor(/^>>> Xword0 /m);
    expect(text.match(/word0 /g)).toHaveLength(1);
    keys("C-e", "C-u");
    await waitFor(/^>>>\s*$/m);
  });

  test("control characters in a paste are not keys: a Ctrl-D does not leave, a Ctrl-A or an arrow key does not move the text", async () => {
    keys("-l", "\x1b[200~\x04pasted\x01 in\x1b[D order\tend\x1b[201~");
    // What is left of the escape sequence is text, as xterm pastes it.
    await waitFor(/>>> pasted in\[D order\s+end$/m);
    keys("Enter");
    await waitFor(/>>> pasted in\[D order\s+end\n[\s\S]*tokens\/s[^\n]*\n>>>\s*$/m);
    expect(alive()).toBe(true);
  });

  test("a paste the terminal does not mark (no bracketed paste) is lines typed: each a message at its own prompt, answered in turn", async () => {
    keys("C-l");
    // paste-buffer without -p pastes as such a terminal does: in one read, each line break an Enter.
    // Before, readline sent the lines at once and wrote them all under the first before its answer;
    // the next prompt then showed the last line while it answered the second.
    tmux("set-buffer", "-b", session, "unmarked one\nunmarked two\nunmarked three");
    tmux("paste-buffer", "-b", session, "-t", session);
    // The last line, without its Enter, waits at its prompt, and is sent by the Enter typed there.
    await waitFor(
      /^>>> unmarked one\n[\s\S]*?tokens\/s[^\n]*\n>>> unmarked two\n[\s\S]*?tokens\/s[^\n]*\n>>> unmarked three$/m,
    );
    keys("Enter");
    await waitFor(/^>>> unmarked three\n[\s\S]*?tokens\/s[^\n]*\n>>>\s*$/m);
  });

  test('a pasted """ block is sent with its line breaks, and closes with a line break after its fence', async () => {
    keys("/clear", "Enter");
    await waitFor(/conversation cleared\n>>>\s*$/m);
    // Whole lines copied: the paste ends with the closing fence's line break.
    tmux("set-buffer", "-b", session, '"""\npasted\nblock\n"""\n');
    tmux("paste-buffer", "-p", "-b", session, "-t", session);
    await waitFor(/>>> """↵pasted↵block↵"""↵$/m);
    keys("Enter");
    await waitFor(/>>> """↵pasted↵block↵"""↵\n[\s\S]*tokens\/s[^\n]*\n>>>\s*$/m);
    const saved = join(root, "pasted-block.json");
    keys(`/save ${saved}`, "Enter");
    await waitFor(/saved 2 messages/);
    // Before, the model read the placeholders: "↵pasted↵block↵".
    expect(JSON.parse(readFileSync(saved, "utf8")).messages[0].content).toBe("pasted\nblock");
  });

  test("slash commands: /help lists commands, an unknown one points to /help, /show describes the model", async () => {
    keys("/help", "Enter");
    await waitFor(/\/stats on\|off/);
    keys("/nonsense", "Enter");
    await waitFor(/unknown command '\/nonsense'; \/help lists the commands/);
    keys("/show", "Enter");
    await waitFor(/architecture:\s+llama, 2 layers/);
  });

  test('Ctrl-C inside a """ block drops the block (nothing is sent) and returns to the prompt', async () => {
    keys("/clear", "Enter");
    await waitFor(/conversation cleared\n>>>\s*$/m);
    keys('"""', "Enter");
    await waitFor(/^\.\.\.\s*$/m);
    // "half" typed ahead of the continuation prompt (it comes with the Enter), as a busy machine can
    // make it: before, the Ctrl-C left it behind the cursor, and it reached the next prompt.
    keys("first line", "Enter", "half");
    await waitFor(/^\.\.\. half$/m);
    keys("C-c");
    await waitFor(/^\.\.\. half\^C\n>>>\s*$/m);
    // The same at an empty continuation line (before, the block was sent and the chat hung).
    keys('"""', "Enter");
    // Typed once the continuation prompt shows (typed ahead, it echoes before the prompt).
    await waitFor(/^\.\.\.\s*$/m);
    keys("second block", "Enter");
    await waitFor(/^\.\.\. second block\n\.\.\.\s*$/m);
    keys("C-c");
    await waitFor(/^\.\.\. \^C\n>>>\s*$/m);
    // A system prompt's block too: dropped, the system prompt is left as it was.
    keys('/set system """', "Enter");
    await waitFor(/^\.\.\.\s*$/m);
    keys("never set", "Enter");
    await waitFor(/^\.\.\. never set\n\.\.\.\s*$/m);
    keys("C-c");
    await waitFor(/^\.\.\. never set\n\.\.\. \^C\n>>>\s*$/m);
    keys("/show", "Enter");
    await waitFor(/system prompt:  \(none\)/);
    // Still taking commands, and no answer was written.
    keys("/stats off", "Enter");
    await waitFor(/stats off\n>>>\s*$/m);
    keys("/stats on", "Enter");
    const text = await waitFor(/stats on\n>>>\s*$/m);
    expect(text.slice(text.lastIndexOf("conversation cleared"))).not.toContain("tokens/s");
  });

  test("a Ctrl-C read with the line's Enter stops its answer at once, and the chat stays", async () => {
    await waitFor(/^>>>\s*$/m);
    keys("/set max_tokens 100000", "Enter");
    await waitFor(/max_tokens = 100000\n>>>\s*$/m);
    keys("C-l");
    // Written at once (a paste without its markers), the keys come in one read: before, readline
    // took the Ctrl-C as typed at an empty prompt, so the answer ran on to a full context and the
    // chat left after it; one after a """ block's closing line went to the block, already sent.
    oneRead("stop me at once\r\x03");
    await waitFor(/^>>> stop me at once\n\n\(stopped\)\n.*tokens\/s.*\n>>>\s*$/m);
    oneRead('"""\rstop this block\r"""\r\x03');
    // Each line at its own continuation prompt, as typed.
    await waitFor(/\.\.\. stop this block\n\.\.\. """\n\S*\s*\(stopped\)\n.*tokens\/s.*\n>>>\s*$/);
    expect(alive()).toBe(true);
  });

  test("lines typed ahead while an answer streams each come at their own prompt, in order, before their answers", async () => {
    keys("C-l");
    keys("tell me everything again", "Enter");
    await Bun.sleep(1500); // into the answer
    // Typed while the answer streams (a paste of two lines among them, one message); the Ctrl-C
    // then stops it. Before, readline took all the lines at once: each was written under the
    // first, before any answer, and the answers came after prompts left empty.
    keys("/set max_tokens 8", "Enter");
    keys("-l", "\x1b[200~first\nahead\x1b[201~");
    keys("Enter", "second ahead", "Enter");
    keys("C-c");
    const text = await waitFor(/\(stopped\)[\s\S]*>>> second ahead\n[\s\S]*tokens\/s[^\n]*\n>>>\s*$/);
    expect(text).toMatch(
      /\(stopped\)\n(.*tokens\/s.*\n)?>>> \/set max_tokens 8\nmax_tokens = 8\n>>> first↵ahead\n[\s\S]*?tokens\/s[^\n]*\n>>> second ahead\n/,
    );
    expect(alive()).toBe(true);
  });

  test("Ctrl-C in the middle of an answer stops it and returns to the prompt", async () => {
    keys("/set max_tokens 100000", "Enter");
    await waitFor(/max_tokens = 100000/);
    keys("/clear", "Enter");
    await waitFor(/conversation cleared/);
    keys("tell me everything", "Enter");
    await Bun.sleep(1500);
    // Typed while the answer streams: it waits for the next prompt, and the Ctrl-C after it still stops the answer.
    keys("next");
    keys("C-c");
    await waitFor(/\(stopped\)\n(.*tokens\/s.*\n)?>>> next$/m);
    keys("C-u");
    await waitFor(/\(stopped\)\n(.*tokens\/s.*\n)?>>>\s*$/m);
    expect(alive()).toBe(true);
  });

  test("Ctrl-C at an empty prompt says how to leave, and the chat stays (a second Ctrl-C to stop an answer lost it)", async () => {
    keys("C-l");
    await waitFor(/^>>>\s*$/m);
    keys("C-c");
    await waitFor(/^>>> \^C\nCtrl-D or \/bye leaves the chat\n>>>\s*$/m);
    expect(alive()).toBe(true);
    // One read with the Enter of an empty line: it acts at the prompt that follows, once drawn.
    keys("C-l");
    await waitFor(/^>>>\s*$/m);
    oneRead("\r\x03");
    await waitFor(/^>>>[ ]*\n>>> \^C\nCtrl-D or \/bye leaves the chat\n>>>\s*$/m);
  });

  test("Up recalls the previous line; Ctrl-D leaves and history is kept on disk", async () => {
    keys("Up");
    await waitFor(/>>> tell me everything$/m);
    keys("C-u");
    keys("C-d");
    const deadline = Date.now() + 10_000;
    while (alive() && Date.now() < deadline) await Bun.sleep(100);
    expect(alive()).toBe(false);
    const history = join(home, "chat_history");
    expect(existsSync(history)).toBe(true);
    expect(readFileSync(history, "utf8")).toContain('"hello there"');
  });
});

describe.skipIf(!hasTmux)("mlx chat in a terminal, leaving from inside a block", () => {
  const inside = `${session}-block`;
  afterAll(() => {
    if (tmux("has-session", "-t", inside).exitCode === 0) tmux("kill-session", "-t", inside);
  });

  test('Ctrl-D inside a """ block leaves with status 0 and sends nothing', async () => {
    const status = join(root, "block-status");
    const command = `MLX_HOME='${home}' NO_COLOR=1 ${mlxCommand} chat -m '${model}' --max-tokens 4; echo $? > '${status}'`;
    tmux("new-session", "-d", "-s", inside, "-x", "150", "-y", "50", command);
    const view = () => tmux("capture-pane", "-p", "-t", inside).stdout.toString();
    const deadline = Date.now() + 20_000;
    const until = async (done: () => boolean) => {
      while (!done() && Date.now() < deadline) await Bun.sleep(100);
    };
    await until(() => /^>>>\s*$/m.test(view()));
    tmux("send-keys", "-t", inside, '"""', "Enter");
    await until(() => /^\.\.\.\s*$/m.test(view()));
    tmux("send-keys", "-t", inside, "a question never sent", "Enter");
    await until(() => /a question never sent\n\.\.\.\s*$/m.test(view()));
    tmux("send-keys", "-t", inside, "C-d");
    await until(() => existsSync(status) && readFileSync(status, "utf8").trim() !== "");
    expect(existsSync(status) ? readFileSync(status, "utf8").trim() : `still running:\n${view()}`).toBe("0");
  });
});

describe.skipIf(!hasTmux)("mlx chat in a dumb terminal (TERM=dumb)", () => {
  const dumb = `${session}-dumb`;
  const dumbModel = join(root, "dumb-model");
  beforeAll(() => writeTinyModel(dumbModel));
  afterAll(() => {
    if (tmux("has-session", "-t", dumb).exitCode === 0) tmux("kill-session", "-t", dumb);
  });

  test('Ctrl-C clears a half-typed line and a """ block\'s: the next line typed goes alone (a /bye leaves)', async () => {
    const status = join(root, "dumb-status");
    const command = `TERM=dumb MLX_HOME='${home}' ${mlxCommand} chat -m '${dumbModel}' --max-tokens 4 --stats; echo $? > '${status}'`;
    tmux("new-session", "-d", "-s", dumb, "-x", "150", "-y", "50", command);
    const view = () => tmux("capture-pane", "-p", "-t", dumb).stdout.toString();
    const deadline = Date.now() + 20_000;
    const until = async (done: () => boolean) => {
      while (!done() && Date.now() < deadline) await Bun.sleep(100);
    };
    await until(() => /^>>>\s*$/m.test(view()));
    tmux("send-keys", "-t", dumb, "half typed", "C-c");
    await until(() => /half typed\^C\n>>>\s*$/m.test(view()));
    tmux("send-keys", "-t", dumb, '"""', "Enter", "in the block", "Enter", "half a line", "C-c");
    await until(() => (view().match(/\^C/g) ?? []).length === 2);
    // Readline edits nothing in a dumb terminal: the text was kept and sent with /bye, as a message.
    tmux("send-keys", "-t", dumb, "/bye", "Enter");
    await until(() => existsSync(status) && readFileSync(status, "utf8").trim() !== "");
    expect(existsSync(status) ? readFileSync(status, "utf8").trim() : `still running:\n${view()}`).toBe("0");
    expect(view()).not.toContain("tokens/s"); // nothing was answered
  });
});

describe.skipIf(!hasTmux)("mlx chat in a terminal, suspended with Ctrl-Z", () => {
  const suspended = `${session}-suspend`;
  const suspendModel = join(root, "suspend-model");
  const view = () => tmux("capture-pane", "-p", "-t", suspended).stdout.toString();
  const keysTo = (...k: string[]) => tmux("send-keys", "-t", suspended, ...k);
  const until = async (pattern: RegExp) => {
    for (const deadline = Date.now() + 20_000; !pattern.test(view()) && Date.now() < deadline; ) await Bun.sleep(100);
    expect(view()).toMatch(pattern);
  };
  afterAll(() => {
    if (tmux("has-session", "-t", suspended).exitCode === 0) tmux("kill-session", "-t", suspended);
  });

  test("fg brings it back taking keys: the half-typed line is kept and sent", async () => {
    writeTinyModel(suspendModel);
    // A shell with job control, as users run it.
    tmux("new-session", "-d", "-s", suspended, "-x", "150", "-y", "50", "bash --norc --noprofile -i");
    keysTo("-l", `PS1='$ '; MLX_HOME='${home}' NO_COLOR=1 ${mlxCommand} chat -m '${suspendModel}' --max-tokens 4`);
    keysTo("Enter");
    await until(/^>>>\s*$/m);
    keysTo("half");
    await until(/^>>> half$/m);
    keysTo("C-z");
    await until(/Stopped[\s\S]*\n\$\s*$/);
    keysTo("fg", "Enter");
    await until(/\$ fg\n[\s\S]*\n>>> half\s*$/);
    // Before, readline stayed paused after fg: these keys were never read.
    keysTo(" typed after fg", "Enter");
    await until(/>>> half typed after fg\n.*\n>>>\s*$/m);
  });
});

describe.skipIf(!hasTmux)("mlx chat in a terminal, keys typed while a command runs", () => {
  const during = `${session}-command`;
  const commandModel = join(root, "command-model");
  const status = join(root, "command-status");
  const view = () => tmux("capture-pane", "-p", "-t", during).stdout.toString();
  const keysTo = (...k: string[]) => tmux("send-keys", "-t", during, ...k);
  const until = async (pattern: RegExp) => {
    for (const deadline = Date.now() + 20_000; !pattern.test(view()) && Date.now() < deadline; ) await Bun.sleep(100);
    expect(view()).toMatch(pattern);
  };
  let pipes = 0;
  /**
   * Types `keys` while a command that takes its time runs, as loading a model does: /load reads a
   * pipe until it is written.
   */
  const whileLoading = async (...keys: string[]) => {
    const pipe = join(root, `slow-load-${++pipes}`);
    expect(Bun.spawnSync(["mkfifo", pipe]).exitCode).toBe(0);
    keysTo("C-u", `/load ${pipe}`, "Enter");
    // The chat is in /load once it opens the pipe to read it, however long it takes to get there:
    // until then, opening it to write without waiting fails (ENXIO). Looked for up to 200 times.
    let writer: number | undefined;
    for (let look = 0; look < 200 && writer === undefined; look++) {
      try {
        writer = openSync(pipe, constants.O_WRONLY | constants.O_NONBLOCK);
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code !== "ENXIO") throw error;
        await Bun.sleep(50);
      }
    }
    if (writer === undefined) throw new Error(`the chat never opened ${pipe}:\n${view()}`);
    keysTo(...keys);
    await Bun.sleep(500); // for tmux to hand the keys to the terminal, while the load still waits
    writeSync(writer, JSON.stringify({ messages: [] }));
    closeSync(writer);
  };
  beforeAll(() => {
    writeTinyModel(commandModel);
    const command = `MLX_HOME='${home}' NO_COLOR=1 ${mlxCommand} chat -m '${commandModel}' --max-tokens 4; echo $? > '${status}'`;
    tmux("new-session", "-d", "-s", during, "-x", "150", "-y", "50", command);
  });
  afterAll(() => {
    if (tmux("has-session", "-t", during).exitCode === 0) tmux("kill-session", "-t", during);
  });

  test("Ctrl-C is ignored: it does not reach the prompt afterwards and leave the chat", async () => {
    await until(/^>>>\s*$/m);
    await whileLoading("C-c");
    await until(/loaded 0 messages from .*\n(\^C)?>>>\s*$/m);
    await Bun.sleep(500); // time for a Ctrl-C that waited to reach the prompt
    expect(existsSync(status)).toBe(false);
    expect(view()).not.toContain("leaves the chat"); // what a Ctrl-C at the prompt says
    keysTo("hello", "Enter");
    await until(/>>> hello\n.*\n>>>\s*$/m);
    expect(existsSync(status)).toBe(false);
  });

  test("a Ctrl-C typed after a line sent ahead stops that line's answer at once", async () => {
    keysTo("C-l");
    // Before, the Ctrl-C was dropped with nothing to stop yet, and the answer then ran on.
    await whileLoading("stop it ahead", "Enter", "C-c");
    await until(/loaded 0 messages from .*\n>>> stop it ahead\n\n\(stopped\)\n>>>\s*$/m);
    expect(existsSync(status)).toBe(false);
  });

  test("other keys wait for the prompt: a line typed ahead is there, and a Ctrl-D then leaves", async () => {
    keysTo("C-l");
    await whileLoading("typed ahead");
    await until(/loaded 0 messages from .*\n>>> typed ahead$/m);
    // Sent ahead with its Enter: it shows behind the prompt, not before it, and is answered.
    keysTo("C-u", "C-l");
    await whileLoading("sent ahead", "Enter");
    await until(/loaded 0 messages from .*\n>>> sent ahead\n.+\n>>>\s*$/m);
    // In cooked mode the terminal took a Ctrl-D typed meanwhile as the end of input, and it was lost.
    await whileLoading("C-d");
    for (const deadline = Date.now() + 20_000; !existsSync(status) && Date.now() < deadline; ) await Bun.sleep(100);
    expect(existsSync(status) ? readFileSync(status, "utf8").trim() : `still running:\n${view()}`).toBe("0");
  });
});

describe.skipIf(!hasTmux)("mlx chat in a terminal: its history file", () => {
  const historySession = `${session}-history`;
  const historyModel = join(root, "history-model");
  beforeAll(() => writeTinyModel(historyModel));
  const view = () => tmux("capture-pane", "-p", "-t", historySession).stdout.toString();
  const keysTo = (...k: string[]) => tmux("send-keys", "-t", historySession, ...k);
  const until = async (pattern: RegExp) => {
    for (const deadline = Date.now() + 20_000; !pattern.test(view()) && Date.now() < deadline; ) await Bun.sleep(100);
    expect(view()).toMatch(pattern);
  };
  /** Starts a chat in a terminal on `historyHome`; `status` gets its exit status when it ends. */
  const start = (historyHome: string, status: string) => {
    const command = `MLX_HOME='${historyHome}' NO_COLOR=1 ${mlxCommand} chat -m '${historyModel}' --max-tokens 4; echo $? > '${status}'`;
    // Wide enough that the note about an unreadable history, which names its path, stays on one line.
    tmux("new-session", "-d", "-s", historySession, "-x", "300", "-y", "50", command);
  };
  const exitStatus = async (status: string) => {
    for (const deadline = Date.now() + 20_000; !existsSync(status) && Date.now() < deadline; ) await Bun.sleep(100);
    return existsSync(status) ? readFileSync(status, "utf8").trim() : `still running:\n${view()}`;
  };
  afterEach(() => {
    if (tmux("has-session", "-t", historySession).exitCode === 0) tmux("kill-session", "-t", historySession);
  });

  test("lines that are not JSON strings are skipped (Up crashed on them); the file is left its owner's alone", async () => {
    const historyHome = join(root, "history-corrupt");
    mkdirSync(historyHome, { recursive: true });
    const history = join(historyHome, "chat_history");
    const invalidUtf8 = Buffer.from([0xff, 0xfe, 0x0a]);
    writeFileSync(
      history,
      Buffer.concat([Buffer.from('"older line"\nnull\n{"a":1}\n42\n'), invalidUtf8, Buffer.from('"newest line"\n')]),
      {
        mode: 0o644,
      },
    );
    const status = join(root, "history-corrupt-status");
    start(historyHome, status);
    await until(/^>>>\s*$/m);
    keysTo("Up");
    await until(/^>>> newest line$/m);
    keysTo("Up");
    await until(/^>>> older line$/m);
    keysTo("C-u", "/help", "Enter");
    await until(/\/bye/);
    keysTo("C-d");
    expect(await exitStatus(status)).toBe("0");
    expect(readFileSync(history, "utf8")).toBe('"older line"\n"newest line"\n"/help"\n');
    // What was typed may be private: readable by its owner alone, as shells and Ollama keep history.
    expect(statSync(history).mode & 0o777).toBe(0o600);
  });

  test("two chats at once: each one's lines are kept, in the order they were typed, whichever leaves last", async () => {
    const historyHome = join(root, "history-two");
    mkdirSync(historyHome, { recursive: true });
    const history = join(historyHome, "chat_history");
    writeFileSync(history, '"from before"\n');
    const other = `${historySession}-other`;
    const otherStatus = join(root, "history-two-other-status");
    const status = join(root, "history-two-status");
    try {
      start(historyHome, status);
      await until(/^>>>\s*$/m);
      tmux(
        "new-session",
        "-d",
        "-s",
        other,
        "-x",
        "300",
        "-y",
        "50",
        `MLX_HOME='${historyHome}' NO_COLOR=1 ${mlxCommand} chat -m '${historyModel}' --max-tokens 4; echo $? > '${otherStatus}'`,
      );
      const otherView = () => tmux("capture-pane", "-p", "-t", other).stdout.toString();
      for (const deadline = Date.now() + 20_000; !/^>>>\s*$/m.test(otherView()) && Date.now() < deadline; )
        await Bun.sleep(100);
      keysTo("/show", "Enter");
      await until(/system prompt/);
      tmux("send-keys", "-t", other, "/help", "Enter");
      tmux("send-keys", "-t", other, "C-d");
      expect(await exitStatus(otherStatus)).toBe("0");
      expect(readFileSync(history, "utf8")).toBe('"from before"\n"/show"\n"/help"\n');
      keysTo("C-d");
      expect(await exitStatus(status)).toBe("0");
      expect(readFileSync(history, "utf8")).toBe('"from before"\n"/show"\n"/help"\n');
    } finally {
      if (tmux("has-session", "-t", other).exitCode === 0) tmux("kill-session", "-t", other);
    }
  });

  test("a line typed is on disk at once: a chat whose terminal is closed keeps it", async () => {
    const historyHome = join(root, "history-hangup");
    start(historyHome, join(root, "history-hangup-status"));
    await until(/^>>>\s*$/m);
    keysTo("a line worth keeping", "Enter");
    await until(/^>>> a line worth keeping\n.*\n>>>\s*$/m);
    // The terminal goes away (SIGHUP), as when its window is closed: the chat never leaves by Ctrl-D.
    tmux("kill-session", "-t", historySession);
    await Bun.sleep(500);
    const history = join(historyHome, "chat_history");
    expect(existsSync(history) ? readFileSync(history, "utf8") : "(no history)").toBe('"a line worth keeping"\n');
  });

  test("a history that cannot be read (a directory) is a one-line note, and the chat goes on", async () => {
    const historyHome = join(root, "history-unreadable");
    mkdirSync(join(historyHome, "chat_history"), { recursive: true });
    const status = join(root, "history-unreadable-status");
    start(historyHome, status);
    await until(/note: cannot read the chat history .*chat_history: .*; starting without it\n/);
    await until(/^>>>\s*$/m);
    keysTo("hello", "Enter");
    await until(/^>>> hello\n.*\n>>>\s*$/m);
    keysTo("C-d");
    expect(await exitStatus(status)).toBe("0");
  });
});

describe.skipIf(!hasTmux)("mlx chat in a terminal: /model's picker", () => {
  const picker = `${session}-picker`;
  const pickerHome = join(root, "picker-home");
  afterAll(() => {
    if (tmux("has-session", "-t", picker).exitCode === 0) tmux("kill-session", "-t", picker);
  });

  test("the keys that pick a model are the picker's alone: an Up then Enter does not also rerun /model", async () => {
    // The picker lists the built-in aliases first: here they name two tiny models.
    const [listedFirst, listedSecond] = [join(root, "picker-first"), join(root, "picker-second")];
    writeTinyModel(listedFirst);
    writeTinyModel(listedSecond, { seed: 2 });
    mkdirSync(pickerHome, { recursive: true });
    writeFileSync(
      join(pickerHome, "models.toml"),
      `[models.smollm2]\nsource = "${listedFirst}"\n\n[models.gemma3]\nsource = "${listedSecond}"\n`,
    );
    const command = `MLX_HOME='${pickerHome}' NO_COLOR=1 ${mlxCommand} chat --max-tokens 4`;
    tmux("new-session", "-d", "-s", picker, "-x", "150", "-y", "50", command);
    const view = () => tmux("capture-pane", "-p", "-t", picker).stdout.toString();
    const until = async (pattern: RegExp) => {
      for (const deadline = Date.now() + 20_000; !pattern.test(view()) && Date.now() < deadline; ) await Bun.sleep(100);
      expect(view()).toMatch(pattern);
    };
    await until(/^>>>\s*$/m);
    tmux("send-keys", "-t", picker, "/model", "Enter");
    await until(/Switch to which model\?/);
    // Up wraps round to the second alias; to readline it would recall "/model", which Enter sends.
    tmux("send-keys", "-t", picker, "Up");
    await until(/● gemma3/);
    tmux("send-keys", "-t", picker, "Enter");
    await until(/now chatting with gemma3\n>>>\s*$/m);
    await Bun.sleep(1000); // time for a second /model to show its picker, were one sent
    expect(view()).not.toContain("Enter: confirm"); // no picker open again
    expect(view()).toMatch(/now chatting with gemma3\n>>>\s*$/m);
  });
});

describe("mlx chat with piped input", () => {
  test("stdin that cannot be read (a directory) is one line naming it, as mlx run says it", async () => {
    const piped = join(root, "piped-directory");
    writeTinyModel(piped);
    const directory = openSync(root, "r");
    try {
      const proc = Bun.spawn([process.execPath, main, "chat", "-m", piped], {
        stdin: directory,
        stdout: "pipe",
        stderr: "pipe",
        env: { ...process.env, MLX_HOME: home },
      });
      const [stderr, code] = await Promise.all([new Response(proc.stderr).text(), proc.exited]);
      expect(code).toBe(1);
      expect(stderr).toBe("error: cannot read stdin: it is a directory\n");
    } finally {
      closeSync(directory);
    }
  });

  test("answers each line, runs slash commands, and exits at the end of input", async () => {
    const piped = join(root, "piped");
    writeTinyModel(piped);
    // Seeded: the second answer is sampled (temp 0.5), and a random model's tokens may hold a
    // line break, which would change the count of lines below from run to run.
    const { stdout, stderr, code } = await chatCli(
      ["-m", piped, "--max-tokens", "4", "--seed", "1"],
      'hello\n/set temp 0.5\n/bogus\n"""\ntwo\nlines\n"""\n',
    );
    expect(code).toBe(0);
    expect(stderr).toContain("temp = 0.5");
    expect(stderr).toContain("unknown command '/bogus'");
    expect(stdout.trim().split("\n").length).toBe(2); // two answers: "hello" and the fenced block
  });

  test("/load restores what /save wrote (messages, system prompt, sampling, max_tokens); a bad file is one line naming it", async () => {
    const piped = join(root, "piped-save");
    writeTinyModel(piped);
    const chat = async (stdin: string) => {
      const { stderr, code } = await chatCli(["-m", piped, "--max-tokens", "4"], stdin);
      expect(code).toBe(0);
      return stderr;
    };
    const saved = join(root, "saved.json");
    await chat(
      `/set temp 0.5\n/set top_p 0.9\n/set repeat_penalty 1.3\n/set seed 9\n/set max_tokens 3\n/set system be brief\nhi\n/save ${saved}\n`,
    );
    const loaded = await chat(`/load ${saved}\n/show\n`);
    expect(loaded).toContain(`loaded 2 messages and the settings from ${saved}\n`);
    // A conversation saved with another model says so, and which one is still talking.
    const other = join(root, "saved-other.json");
    writeFileSync(other, JSON.stringify({ ...JSON.parse(readFileSync(saved, "utf8")), model: "smollm2" }));
    expect(await chat(`/load ${other}\n`)).toContain(
      `loaded 2 messages and the settings from ${other} (saved with smollm2; still ${piped}: /model smollm2 to switch)`,
    );
    expect(loaded).toMatch(
      /settings: +temp 0\.5, top_p 0\.9, top_k 0, min_p 0, repeat_penalty 1\.3, max_tokens 3, seed 9,/,
    );
    expect(loaded).toContain("system prompt:  be brief");

    const notJson = join(root, "not.json");
    writeFileSync(notJson, "{ half");
    const bad = join(root, "bad-settings.json");
    writeFileSync(bad, JSON.stringify({ messages: [], settings: { temperature: -1 } }));
    const errors = await chat(`/load ${join(root, "nonexist.json")}\n/load ${notJson}\n/load ${bad}\n`);
    expect(errors).toContain(`error: cannot read '${join(root, "nonexist.json")}': no such file\n`);
    expect(errors).toMatch(new RegExp(`error: '${notJson}' is not valid JSON: .+\\n`));
    expect(errors).toContain(`error: ${bad}: temperature must be >= 0 (got -1)`);
  });

  test("/save names the model chatted with when -m is not given (the default's name), so /load's hint to switch to it works", async () => {
    const ownHome = join(root, "home-default");
    mkdirSync(ownHome, { recursive: true });
    const piped = join(root, "piped-default");
    writeTinyModel(piped);
    writeFileSync(
      join(ownHome, "models.toml"),
      `default = "tiny-default"\n\n[models.tiny-default]\nsource = "${piped}"\n`,
    );
    const saved = join(root, "saved-default.json");
    const { code } = await cliRunner(ownHome)(["chat", "--max-tokens", "2"], `hi\n/save ${saved}\n`);
    expect(code).toBe(0);
    // Not "default model", which /model cannot open.
    expect(JSON.parse(readFileSync(saved, "utf8")).model).toBe("tiny-default");
  });

  test("/load refuses JSON that is not a /save file (null, other roles) in one line; /set reads whole numbers as the flags do", async () => {
    const piped = join(root, "piped-strict");
    writeTinyModel(piped);
    const nullFile = join(root, "null.json");
    writeFileSync(nullFile, "null\n");
    const roles = join(root, "roles.json");
    writeFileSync(
      roles,
      JSON.stringify({
        messages: [
          { role: "system", content: "again" },
          { role: "bogus", content: "x" },
        ],
      }),
    );
    const { stderr, code } = await chatCli(
      ["-m", piped, "--max-tokens", "2"],
      `/load ${nullFile}\n/load ${roles}\n/set max_tokens 1e2\n/set seed 0x10\n/set foo bar\n/set temp -1\n/set repeat_penalty 0\n/set top_p 2\n/show\n`,
    );
    expect(code).toBe(0);
    const notSaved = (file: string) =>
      `error: ${file} is not a conversation saved with /save (needs messages: [{role: "user" or "assistant", content}])\n`;
    expect(stderr).toContain(notSaved(nullFile));
    expect(stderr).toContain(notSaved(roles));
    expect(stderr).toContain("error: /set max_tokens needs a whole number (got '1e2')\n");
    expect(stderr).toContain("error: /set seed needs a whole number (got '0x10')\n");
    expect(stderr).toContain("error: unknown setting 'foo'");
    // Named as /set takes them (temp, not temperature, which /set calls an unknown setting).
    expect(stderr).toContain("error: /set temp must be >= 0 (got -1)\n");
    expect(stderr).toContain("error: /set repeat_penalty must be > 0 (got 0)\n");
    expect(stderr).toContain("error: /set top_p must be in (0, 1] (got 2)\n");
    expect(stderr).toMatch(/max_tokens 2, seed random,/); // nothing was changed
  });

  test("/load and /set format read a file only up to a bound: one far too large is one line, and the chat goes on", async () => {
    const piped = join(root, "piped-huge");
    writeTinyModel(piped);
    // Sparse, a byte over each bound: read whole, /load /dev/zero (a file without an end) held
    // the chat for good, its memory growing.
    const huge = join(root, "huge.json");
    const hugeSchema = join(root, "huge-schema.json");
    for (const [file, bytes] of [
      [huge, 64e6 + 1],
      [hugeSchema, 16e6 + 1],
    ] as const) {
      writeFileSync(file, "");
      truncateSync(file, bytes);
    }
    const { stdout, stderr, code } = await chatCli(
      ["-m", piped, "--max-tokens", "2"],
      `/load ${huge}\n/set format ${hugeSchema}\nhi\n`,
    );
    expect(code).toBe(0);
    expect(stderr).toContain(`error: cannot read '${huge}': larger than 64.0 MB\n`);
    expect(stderr).toContain(`error: cannot read schema file '${hugeSchema}': larger than 16.0 MB\n`);
    expect(stdout.trim().split("\n").length).toBe(1); // "hi" answered
  });

  test("/set parameter takes Ollama's names (temperature, num_predict), and /set verbose|quiet turn the stats on and off", async () => {
    const piped = join(root, "piped-ollama-set");
    writeTinyModel(piped);
    const { stderr, code } = await chatCli(
      ["-m", piped, "--max-tokens", "2"],
      "/set parameter temperature 0.5\n/set parameter num_predict 3\n/set parameter top_k 4\n/set parameter nonsense 9\n/set parameter\n/set verbose\nhi\n/set quiet\nhi\n/show\n",
    );
    expect(code).toBe(0);
    expect(stderr).toContain("temp = 0.5\nmax_tokens = 3\ntop_k = 4\n");
    expect(stderr).toContain("error: unknown setting 'nonsense'");
    expect(stderr).toContain("error: usage: /set parameter <name> <value> (names: temperature, num_predict, temp,");
    expect(stderr).toMatch(/settings: +temp 0\.5, top_p 1, top_k 4, min_p 0, repeat_penalty 1, max_tokens 3,/);
    // The stats line after the first "hi" alone: verbose, then quiet.
    expect(stderr).toContain("stats on\n");
    expect(stderr.match(/tokens\/s/g)?.length).toBe(1);
  });

  test("/set parameter stop ... ends answers at those strings, as in Ollama; one of spaces as a JSON string; none clears them", async () => {
    const scripted = join(root, "piped-ollama-stop");
    writeScriptedModel(scripted, ["Hi", " there", ", friend"]);
    const { stdout, stderr, code } = await chatCli(
      ["-m", scripted, "--temp", "0"],
      'hi\n/set parameter stop there nothing\nhi\n/set stop ", friend"\nhi\n/set stop\nhi\n/show parameters\n',
    );
    expect(code).toBe(0);
    expect(stdout.split("\n").slice(0, 4)).toEqual(["Hi there, friend", "Hi ", "Hi there", "Hi there, friend"]);
    expect(stderr).toContain('stop = ["there","nothing"]\nstop = [", friend"]\nstop strings cleared');
    expect(stderr).not.toContain("error:");
    // A remote model's answers stop there too: the strings go to its provider.
    const { proc, url } = await startServe(scripted, [], { MLX_HOME: join(root, "stop-serve-home") });
    try {
      const remoteHome = remoteHomeOf("stop-remote-home", url, scripted);
      const remote = await cliRunner(remoteHome)(["chat", "-m", "far", "--temp", "0"], "/set stop there\nhi\n");
      expect(remote.code).toBe(0);
      expect(remote.stdout.split("\n")[0]).toBe("Hi ");
    } finally {
      proc.kill();
      await proc.exited;
    }
  });

  test("/set parameter num_ctx bounds the conversation's context: its oldest messages make room there, as at the model's length", async () => {
    const piped = join(root, "piped-ollama-num-ctx");
    writeTinyModel(piped);
    const long = "tell me about the weather in the mountains this week please";
    const { stderr, code } = await chatCli(
      ["-m", piped, "--max-tokens", "2", "--stats"],
      `/set parameter num_ctx 80\n${long}\n${long}\n${long}\n/set parameter num_gpu 20\n/set parameter num_predict -1\n/set parameter repeat_last_n -1\n/set parameter presence_penalty 0.5\n/set parameter mirostat 0\n/set parameter mirostat 2\n/show parameters\n`,
    );
    expect(code).toBe(0);
    expect(stderr).toContain("num_ctx = 80\n");
    expect(stderr).toContain("(context full: dropped the");
    // Each answer's context use, within num_ctx.
    const used = [...stderr.matchAll(/context (\d+)\/80/g)].map((m) => Number(m[1]));
    expect(used.length).toBe(3);
    for (const tokens of used) expect(tokens).toBeLessThanOrEqual(80);
    // Ollama's hints to its runner are taken, and said to do nothing here.
    expect(stderr).toContain("num_gpu is a hint to Ollama's runner that does nothing here");
    // num_predict -1 (Ollama's "until the context is full"): the model's context length (512), which num_ctx bounds.
    expect(stderr).toContain("max_tokens = 512: until the context is full\n");
    // The rest of Ollama's sampling options; mirostat only off, as the server takes it.
    expect(stderr).toContain("repeat_last_n = -1\npresence_penalty = 0.5\nmirostat = 0 (off");
    expect(stderr).toContain("error: mirostat is not supported here");
    expect(stderr.match(/error:/g)?.length).toBe(1);
    expect(stderr).toMatch(/settings: .*, max_tokens 512, .*, num_ctx 80, presence_penalty 0.5/);
  });

  test("an alias's num_ctx bounds the conversation as /set num_ctx does: its oldest messages make room, no turn is refused", async () => {
    const piped = join(root, "piped-alias-num-ctx");
    writeTinyModel(piped);
    const aliasHome = join(root, "num-ctx-home");
    mkdirSync(aliasHome, { recursive: true });
    writeFileSync(join(aliasHome, "models.toml"), `[models.short]\nsource = "${piped}"\nnum_ctx = 80\n`);
    const long = "tell me about the weather in the mountains this week please";
    const { stderr, code } = await cliRunner(aliasHome)(
      ["chat", "-m", "short", "--max-tokens", "2", "--stats"],
      `${long}\n${long}\n${long}\n`,
    );
    expect(stderr).not.toContain("error:");
    expect(code).toBe(0);
    expect(stderr).toContain("(context full: dropped the");
    expect([...stderr.matchAll(/context \d+\/80/g)].length).toBe(3);
  });

  test("/show modelfile and /show license, as in ollama run: the model's own settings, written as a Modelfile", async () => {
    const piped = join(root, "piped-show-modelfile");
    writeTinyModel(piped);
    const aliasHome = join(root, "modelfile-home");
    mkdirSync(aliasHome, { recursive: true });
    writeFileSync(
      join(aliasHome, "models.toml"),
      `[models.pirate]\nsource = "${piped}"\nsystem = "Talk like a pirate."\nlicense = "MIT"\ntemperature = 0.5\nstop = ["Arr"]\n`,
    );
    const chat = (args: string[], stdin: string) => cliRunner(aliasHome)(["chat", ...args], stdin);
    const { stderr, code } = await chat(["-m", "pirate"], "/set temp 0.9\n/show modelfile\n/show license\n");
    expect(code).toBe(0);
    // The alias's values, not this chat's /set temp.
    expect(stderr).toContain(
      `FROM ${piped}\nPARAMETER temperature 0.5\nPARAMETER stop Arr\nSYSTEM """Talk like a pirate."""\nLICENSE """MIT"""\nMIT\n`,
    );
    const bare = await chat(["-m", piped], "/show license\n/show\n");
    expect(bare.stderr).toStartWith("No license was specified for this model.\n");
    // /show alone leaves them out.
    expect(bare.stderr).not.toContain("FROM ");
    expect(bare.stderr.match(/No license/g)?.length).toBe(1);
  });

  test("/set think|nothink switch a thinking model's reasoning, as in Ollama; /set noformat is format off", async () => {
    const thinks = join(root, "piped-ollama-think");
    // A template that opens the reasoning itself: a random model's answer stays inside it unless thinking is off.
    writeTinyModel(thinks, {
      chatTemplate:
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}<|im_start|>assistant\n<think>\n",
    });
    const { stdout, stderr, code } = await chatCli(
      ["-m", thinks, "--hide-thinking", "--max-tokens", "8", "--temp", "1", "--seed", "1"],
      "hello\n/set nothink\nhello\n/set think\nhello\n/set format json\n/set noformat\n",
    );
    expect(code).toBe(0);
    expect(stderr).toBe(
      "thinking off\nthinking on\nformat = json: answers are JSON objects\nformat off: answers are free text\n",
    );
    // Reasoning hidden: only the answer with thinking off shows text. Before, each /set was an unknown setting.
    const answers = stdout.split("\n").slice(0, 3);
    expect(answers.map((answer) => answer.trim() !== "")).toEqual([false, true, false]);
    // A model that does not think is refused thinking in one line, as --think is; off is fine.
    const plain = join(root, "piped-ollama-nothink");
    writeTinyModel(plain);
    const refused = await chatCli(["-m", plain, "--max-tokens", "2"], "/set think\n/set nothink\nhi\n");
    expect(refused.code).toBe(0);
    expect(refused.stderr).toBe(
      "error: this model does not think (its chat template has no <think> section)\nthinking off\n",
    );
  });

  test("/show <part> shows that part alone, as in Ollama; an unknown part is one line naming the parts", async () => {
    const piped = join(root, "piped-show-part");
    writeTinyModel(piped);
    const show = async (command: string) => {
      const { stderr, code } = await chatCli(["-m", piped, "--max-tokens", "2"], `/set system be brief\n${command}\n`);
      expect(code).toBe(0);
      return stderr.replace("system prompt set\n", "");
    };
    expect(await show("/show system")).toBe("system prompt:  be brief\n");
    expect(await show("/show parameters")).toMatch(/^settings: +temp 0, [^\n]*format off\n$/);
    expect(await show("/show info")).toMatch(/^model: [^\n]*\n(?:.+\n)*speculation: +off\n$/);
    expect(await show("/show info")).not.toContain("settings:");
    expect(await show("/show template")).toMatch(/^chat template:\n\{%/);
    expect(await show("/show nonsense")).toBe(
      "error: unknown part 'nonsense' to show; /show alone shows info, parameters, system, template, or /show info|parameters|system|template|modelfile|license\n",
    );
    // Alone, all of them, as before.
    const all = await show("/show");
    for (const line of ["model:", "settings:", "system prompt:  be brief", "chat template:"])
      expect(all).toContain(line);
  });

  test("--verbose shows the figures after each answer, as mlx run --verbose and ollama run --verbose do", async () => {
    const piped = join(root, "piped-verbose");
    writeTinyModel(piped);
    const { stderr, code } = await chatCli(["-m", piped, "--max-tokens", "2", "--verbose"], "hi\nagain\n");
    expect(code).toBe(0);
    expect(stderr.match(/tokens\/s · first token [^\n]* · prompt \d+ new \+ \d+ cached tokens/g)?.length).toBe(2);
  });

  test("--stats with a rotating cache names what bounds it, not the model's length the conversation outgrows", async () => {
    const piped = join(root, "piped-rotating");
    writeTinyModel(piped, { contextLength: 64 });
    const turns = Array.from({ length: 4 }, (_, i) => `turn ${i} ${"blah ".repeat(10)}\n`).join("");
    const proc = Bun.spawn(
      [process.execPath, main, "chat", "-m", piped, "--max-tokens", "10", "--max-kv-size", "32", "--stats"],
      { stdin: new Blob([turns]), stdout: "pipe", stderr: "pipe", env: { ...process.env, MLX_HOME: home } },
    );
    const [stderr, code] = await Promise.all([new Response(proc.stderr).text(), proc.exited]);
    expect(code).toBe(0);
    const contexts = [...stderr.matchAll(/context (\d+) \(the rotating cache keeps 32 positions\)\n/g)];
    expect(contexts.length).toBe(4);
    expect(Number(contexts.at(-1)![1])).toBeGreaterThan(64); // past the model's length: nothing was dropped
    expect(stderr).not.toContain("dropped");
  });

  test("an answer the full context cuts short before --max-tokens says so, and the next turn makes room", async () => {
    const piped = join(root, "piped-small");
    writeTinyModel(piped, { contextLength: 64 });
    const { stderr, code } = await chatCli(
      ["-m", piped, "--max-tokens", "1000", "--stats"],
      "Tell me a story\nAnd another one\n",
    );
    expect(code).toBe(0);
    expect(stderr).toContain("(context full: the answer was cut short)\n");
    expect(stderr).toMatch(/context 64\/64\n/);
    expect(stderr).toContain("(context full: dropped the 2 oldest messages)");
  });

  test("piped, a line whose answer fails (over the context) is one error line, the next is answered, and the exit status is 1", async () => {
    const piped = join(root, "piped-failing");
    writeTinyModel(piped, { contextLength: 64 });
    const { stdout, stderr, code } = await chatCli(
      ["-m", piped, "--max-tokens", "3"],
      `${"word ".repeat(200)}\nHello\n`,
    );
    expect(stderr).toMatch(/^error: .*context/m);
    expect(stdout.trim().split("\n")).toHaveLength(1); // "Hello" answered
    // A script reading its answers learns that one failed, as from mlx run (it was 0).
    expect(code).toBe(1);
  });

  test("/set system keeps the prompt as typed; /save to a missing folder is one line naming the file", async () => {
    const piped = join(root, "piped-set");
    writeTinyModel(piped);
    const missing = join(root, "no-such-folder", "chat.json");
    const { stderr, code } = await chatCli(
      ["-m", piped, "--max-tokens", "2"],
      `/set system Be  brief:\tone line.\n/show\n/save ${missing}\n`,
    );
    expect(code).toBe(0);
    expect(stderr).toContain("system prompt:  Be  brief:\tone line.\n");
    expect(stderr).toContain(`error: cannot write '${missing}': no such directory\n`);
  });

  test('/set system """ takes a system prompt of several lines, as in Ollama', async () => {
    const piped = join(root, "piped-system-block");
    writeTinyModel(piped);
    const { stdout, stderr, code } = await chatCli(
      ["-m", piped, "--max-tokens", "2"],
      '/set system """You are a pirate.\nAlways say arr.\n"""\n/show\n/set system Say """hi"""\n/show\n',
    );
    expect(code).toBe(0);
    expect(stdout).toBe(""); // nothing was sent to the model
    expect(stderr).toContain("system prompt:  You are a pirate.\nAlways say arr.\nchat template:");
    expect(stderr).toContain('system prompt:  Say """hi"""\n'); // a value that only holds fences is kept as typed
  });

  test('a """ block that starts with / is a message, not a command (code opening with a // comment was lost)', async () => {
    const piped = join(root, "piped-slash-block");
    writeTinyModel(piped);
    const { stderr, code } = await chatCli(
      ["-m", piped, "--max-tokens", "2", "--stats"],
      '"""\n// add two numbers\nconst add = (a, b) => a + b;\n"""\n"""/help"""\n',
    );
    expect(code).toBe(0);
    expect(stderr).not.toContain("unknown command");
    expect(stderr).not.toContain("commands:");
    expect([...stderr.matchAll(/tokens\/s/g)].length).toBe(2); // both blocks answered
  });
});

describe("mlx chat /model", () => {
  const first = join(root, "switch-first");
  const second = join(root, "switch-second");
  const aliasHome = join(root, "switch-home");
  beforeAll(() => {
    // Heads of 64 values: room for a KV quantization group of 32 or 64.
    writeTinyModel(first, { headDim: 64, seed: 1 });
    writeTinyModel(second, { headDim: 64, seed: 2 });
    mkdirSync(aliasHome, { recursive: true });
    writeFileSync(join(aliasHome, "models.toml"), `[models.second-8bit]\nsource = "${second}"\nkv_bits = 8\n`);
  });

  /** What a chat started with `flags` on the first model, fed `stdin`, writes; it must exit 0, errors unless `errors`. */
  const chat = async (flags: string[], stdin: string, o: { errors?: boolean } = {}) => {
    const proc = Bun.spawn([process.execPath, main, "chat", "-m", first, "--max-tokens", "3", ...flags], {
      stdin: new Blob([stdin]),
      stdout: "pipe",
      stderr: "pipe",
      env: { ...process.env, MLX_HOME: aliasHome },
    });
    const [stdout, stderr, code] = await Promise.all([
      new Response(proc.stdout).text(),
      new Response(proc.stderr).text(),
      proc.exited,
    ]);
    if (!o.errors) expect(stderr).not.toContain("error:");
    expect(code).toBe(0);
    return { stdout, stderr };
  };

  test("the model switched to keeps the command line's KV cache and speculation flags", async () => {
    const quantized = await chat(
      ["--kv-bits", "4", "--kv-group-size", "32", "--prompt-lookup", "--num-draft", "2"],
      `/model ${second}\n/show\nhello\n`,
    );
    expect(quantized.stderr).toContain(`now chatting with ${second}`);
    expect(quantized.stderr).toContain(`model:          ${second}`);
    expect(quantized.stderr).toContain("kv cache:       4-bit, group 32\n");
    expect(quantized.stderr).toContain("speculation:    prompt lookup, 2 tokens drafted per step\n");
    expect(quantized.stdout.trim()).not.toBe(""); // and it answers with them

    const drafted = await chat(["--draft-model", first], `/model ${second}\n/show\n`);
    expect(drafted.stderr).toContain(`speculation:    draft model ${first}, 3 tokens drafted per step\n`);
  });

  test("with a rotating cache from the flags and the alias's own kv_bits", async () => {
    const { stderr } = await chat(["--max-kv-size", "64"], "/model second-8bit\n/show\n");
    expect(stderr).toContain("kv cache:       8-bit, group 64, rotating: at most 64 positions\n");
    expect(stderr).toContain("speculation:    off\n");
  });

  test("/load <alias> switches to that model, as ollama run's /load does; a name that is neither a file nor an alias is one line", async () => {
    const { stdout, stderr } = await chat([], "/load second-8bit\n/show info\nhello\n/load no-such-thing\n", {
      errors: true,
    });
    expect(stderr).toContain("now chatting with second-8bit\n");
    expect(stderr).toContain(`model:          ${second} (mlx)`);
    expect(stdout.trim()).not.toBe("");
    expect(stderr).toContain("error: cannot read 'no-such-thing': no such file\n");
    expect(stderr.match(/error:/g)?.length).toBe(1);
  });

  test("a model the KV cache flags do not fit is refused in one line, and the chat goes on with the one it had", async () => {
    const narrow = join(root, "switch-narrow");
    writeTinyModel(narrow, { headDim: 16 });
    const { stdout, stderr } = await chat(["--kv-bits", "4"], `/model ${narrow}\n/show\nhello\n`, { errors: true });
    expect(stderr).toContain("error: invalid option: a 4-bit KV cache needs the head size (16) to be a multiple");
    expect(stderr).not.toContain("now chatting with");
    expect(stderr).toContain(`model:          ${first} (mlx)`);
    expect(stdout.trim()).not.toBe("");
  });

  test("--think for a model that does not think is refused in one line: at the start, and by /model", async () => {
    const thinking = join(root, "switch-thinking");
    // A template with <think>: a model that thinks, for the chat to start with.
    writeTinyModel(thinking, {
      chatTemplate:
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}<|im_start|>assistant\n<think>\n",
    });
    const refusal = "error: this model does not think (its chat template has no <think> section)\n";

    // Before, the chat started and every message failed with this line (exit status 0).
    const start = Bun.spawn([process.execPath, main, "chat", "-m", first, "--think"], {
      stdin: new Blob(["hello\nagain\n"]),
      stderr: "pipe",
      env: { ...process.env, MLX_HOME: aliasHome },
    });
    expect(await new Response(start.stderr).text()).toBe(refusal);
    expect(await start.exited).toBe(1);

    const proc = Bun.spawn([process.execPath, main, "chat", "-m", thinking, "--think", "--max-tokens", "3"], {
      stdin: new Blob([`/model ${first}\n/show\nhello\n`]),
      stdout: "pipe",
      stderr: "pipe",
      env: { ...process.env, MLX_HOME: aliasHome },
    });
    const [stdout, stderr, code] = await Promise.all([
      new Response(proc.stdout).text(),
      new Response(proc.stderr).text(),
      proc.exited,
    ]);
    expect(code).toBe(0);
    expect(stderr).toStartWith(refusal);
    expect(stderr).not.toContain("now chatting with");
    expect(stderr).toContain(`model:          ${thinking} (mlx)`);
    expect(stderr.split(refusal).length).toBe(2); // only /model was refused: the message was answered
    expect(stdout.trim()).not.toBe("");
  });

  test("a model without a chat template is refused in one line: at the start, and by /model", async () => {
    const untemplated = join(root, "switch-untemplated");
    writeTinyModel(untemplated);
    const configFile = join(untemplated, "tokenizer_config.json");
    const { chat_template: _, ...config } = JSON.parse(readFileSync(configFile, "utf8"));
    writeFileSync(configFile, JSON.stringify(config));
    const refusal = `error: ${untemplated} has no chat template to chat with (mlx run sends it prompts as plain text)\n`;

    const start = Bun.spawn([process.execPath, main, "chat", "-m", untemplated], {
      stdin: new Blob(["hello\n"]),
      stderr: "pipe",
      env: { ...process.env, MLX_HOME: aliasHome },
    });
    expect(await new Response(start.stderr).text()).toBe(refusal);
    expect(await start.exited).toBe(1);

    const { stdout, stderr } = await chat([], `/model ${untemplated}\nhello\n`, { errors: true });
    expect(stderr).toBe(refusal);
    expect(stdout.trim()).not.toBe(""); // answered by the model it had
  });
});

describe("mlx chat with a remote model", () => {
  test("a conversation past the provider's context drops its oldest exchanges and goes on, as a local one does", async () => {
    const far = join(root, "remote-model");
    writeTinyModel(far, { contextLength: 512 });
    const { proc, url } = await startServe(far, [], { MLX_HOME: join(root, "serve-home") });
    try {
      const remoteHome = remoteHomeOf("remote-home", url, far);
      // Each exchange some 85 tokens: ten outgrow the 512 the server's model holds.
      const lines = Array.from({ length: 10 }, (_, i) => `message number ${i} with some words to fill the context\n`);
      const { stderr, code } = await cliRunner(remoteHome)(
        ["chat", "-m", "far", "--max-tokens", "60", "--temp", "0"],
        lines.join(""),
      );
      // Every message was refused once the conversation outgrew the context, until /clear.
      expect(stderr).not.toContain("error:");
      expect(stderr).toContain("(context full: dropped the ");
      expect(code).toBe(0);
    } finally {
      proc.kill();
      await proc.exited;
    }
  });
});
