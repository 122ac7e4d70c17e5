// Talking to the server from a page: the API key (asked for once, kept in this browser, sent
// only in the Authorization header, never in a URL) and server-sent events read from a fetch
// response (EventSource cannot send headers).
import { EventSourceParserStream } from "eventsource-parser/stream";

const KEY = "mlx.apiKey";
let asking: Promise<void> | undefined;

/** Asks for the API key in the page's key dialog; concurrent callers share one question. */
function askForKey(wrong: boolean): Promise<void> {
  asking ??= new Promise<void>((resolve) => {
    const dialog = document.querySelector<HTMLDialogElement>("#key-dialog")!;
    const input = dialog.querySelector<HTMLInputElement>("input")!;
    dialog.querySelector<HTMLElement>(".key-wrong")!.hidden = !wrong;
    input.value = "";
    dialog.addEventListener(
      "close",
      () => {
        if (input.value.trim()) localStorage.setItem(KEY, input.value.trim());
        asking = undefined;
        resolve();
      },
      { once: true },
    );
    dialog.showModal();
  });
  return asking;
}

/** fetch() with the API key; a 401 asks for the key and tries again. */
export async function api(path: string, init: RequestInit = {}): Promise<Response> {
  for (;;) {
    const key = localStorage.getItem(KEY);
    const headers = new Headers(init.headers);
    if (key) headers.set("Authorization", `Bearer ${key}`);
    const response = await fetch(path, { ...init, headers });
    if (response.status !== 401) return response;
    await askForKey(key !== null);
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
  const reader = response.body!.pipeThrough(new TextDecoderStream()).pipeThrough(new EventSourceParserStream()).getReader();
  for (;;) {
    const { done, value } = await reader.read();
    if (done) return;
    yield value.data;
  }
}
