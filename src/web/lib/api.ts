// Talking to the server from a page: the API key (asked for once, kept in this browser, sent
// only in the Authorization header, never in a URL) and server-sent events read from a fetch
// response (EventSource cannot send headers).
import { EventSourceParserStream } from "eventsource-parser/stream";

const KEY = "mlx.apiKey";
let asking: Promise<boolean> | undefined;
/**
 * Set when the dialog was closed without a key (Esc), or the key forgotten: requests the page
 * makes by itself (the model list after each answer, the dashboard's feed every 2 s) then fail
 * saying why instead of asking again, and only what the user does asks (a question, the
 * "API key" button).
 */
let declined = false;
/** The page's "API key" button, shown once the server asked for a key or one is kept. */
let keyButton: HTMLButtonElement | undefined;

/** The dialog that asks for the key (made on first use: most servers have no key). */
function keyDialog(): HTMLDialogElement {
  let dialog = document.querySelector<HTMLDialogElement>("#key-dialog");
  if (dialog) return dialog;
  dialog = document.createElement("dialog");
  dialog.id = "key-dialog";
  const form = document.createElement("form");
  form.method = "dialog";
  const why = document.createElement("p");
  why.textContent = "This server needs an API key. It is kept in this browser and sent only in request headers.";
  const wrong = document.createElement("p");
  wrong.className = "key-wrong";
  wrong.textContent = "That key was refused.";
  const input = Object.assign(document.createElement("input"), {
    type: "password",
    autocomplete: "off",
    placeholder: "API key",
    required: true,
  });
  input.setAttribute("aria-label", "API key");
  const save = Object.assign(document.createElement("button"), { type: "submit", value: "save", textContent: "Save" });
  // Closes without the (required) key: on a shared machine, the key kept in this browser goes.
  const forget = Object.assign(document.createElement("button"), {
    type: "submit",
    value: "forget",
    formNoValidate: true,
    className: "key-forget",
    textContent: "Forget the key kept in this browser",
  });
  form.append(why, wrong, input, save, forget);
  dialog.append(form);
  document.body.append(dialog);
  return dialog;
}

/**
 * Asks for the API key (whether one was given: Esc closes the dialog without, and Forget drops
 * the one kept); concurrent callers share one question.
 */
function askForKey(wrong: boolean): Promise<boolean> {
  asking ??= new Promise<boolean>((resolve) => {
    const dialog = keyDialog();
    const input = dialog.querySelector("input")!;
    dialog.querySelector<HTMLElement>(".key-wrong")!.hidden = !wrong;
    dialog.querySelector<HTMLElement>(".key-forget")!.hidden = localStorage.getItem(KEY) === null;
    input.value = "";
    dialog.returnValue = "";
    dialog.addEventListener(
      "close",
      () => {
        const key = dialog.returnValue === "save" ? input.value.trim() : "";
        if (key) localStorage.setItem(KEY, key);
        if (dialog.returnValue === "forget") localStorage.removeItem(KEY);
        declined = key === "";
        asking = undefined;
        if (keyButton) keyButton.hidden = false;
        resolve(key !== "");
      },
      { once: true },
    );
    dialog.showModal();
  });
  return asking;
}

/**
 * Makes `button` the page's way to give, change or forget the API key: shown once the server
 * asked for one or one is kept (most servers have none); `changed` runs once the dialog closes
 * (the page asks the server anew, with the key or without it).
 */
export function keyControl(button: HTMLButtonElement, changed: () => void): void {
  keyButton = button;
  button.hidden = localStorage.getItem(KEY) === null;
  button.addEventListener("click", () => void askForKey(false).then(changed));
}

/**
 * fetch() with the API key; a 401 asks for the key and tries again. `path` is relative to the
 * page (no leading slash), so the pages also work behind a proxy that serves them under a sub-path.
 * Asked for the key, one who has none closes the dialog: the request fails, saying why, rather than
 * ask again at once (a dialog that could not be closed, over the conversations kept in this browser).
 * After that only a request the user made (`byUser`: a question) asks again.
 */
export async function api(path: string, init: RequestInit = {}, o: { byUser?: boolean } = {}): Promise<Response> {
  for (let asked = false; ; asked = true) {
    const key = localStorage.getItem(KEY);
    const headers = new Headers(init.headers);
    if (key) headers.set("Authorization", `Bearer ${key}`);
    const response = await fetch(path, { ...init, headers }).catch((error) => {
      throw networkFailure(error, "cannot reach the server (is mlx serve running?)");
    });
    if (response.status !== 401) return response;
    if (keyButton) keyButton.hidden = false;
    const ask = !declined || (o.byUser && !asked);
    if (!ask || !(await askForKey(key !== null))) throw new Error("this server needs an API key");
  }
}

/** The message of an API error response. */
export async function errorMessage(response: Response): Promise<string> {
  const text = await response.text();
  try {
    const body = JSON.parse(text);
    return body.error?.message ?? body.error ?? text;
  } catch {
    return text || `${response.status} ${response.statusText}`;
  }
}

/** Each `data:` payload of a server-sent-events response, until it ends. */
export async function* events(response: Response): AsyncGenerator<string> {
  const reader = response
    .body!.pipeThrough(new TextDecoderStream())
    .pipeThrough(new EventSourceParserStream())
    .getReader();
  for (;;) {
    const { done, value } = await reader.read().catch((error) => {
      throw networkFailure(error, "the connection to the server was lost");
    });
    if (done) return;
    yield value.data;
  }
}

/**
 * A failed fetch or read says only "Failed to fetch" or "network error" (a TypeError, in every
 * browser): `message` says what that means here. Anything else (a stop: an AbortError) is kept.
 */
function networkFailure(error: unknown, message: string): unknown {
  return error instanceof TypeError ? new Error(message) : error;
}
