// The interactive serial console: xterm.js over a WebSocket to the instance's serial port,
// through the API. The token is the socket's first message, never part of its URL.
import { Terminal } from "/static/vendor/xterm.mjs";
import { FitAddon } from "/static/vendor/addon-fit.mjs";
import { scoped, session } from "./api.js";

export function openSerial(container, ref, onStatus) {
  const term = new Terminal({ convertEol: false, cursorBlink: true, fontSize: 14, scrollback: 5000 });
  const fit = new FitAddon();
  term.loadAddon(fit);
  term.open(container);
  fit.fit();
  const resize = new ResizeObserver(() => fit.fit());
  resize.observe(container);
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  const ws = new WebSocket(`${proto}//${location.host}${scoped(`/v1/instances/${encodeURIComponent(ref)}/serial`)}`);
  ws.binaryType = "arraybuffer";
  const encoder = new TextEncoder();
  let closedByUs = false;
  ws.addEventListener("open", () => {
    ws.send(JSON.stringify({ token: session.token() }));
    onStatus("authorising…");
  });
  ws.addEventListener("message", (ev) => {
    if (typeof ev.data !== "string") {
      term.write(new Uint8Array(ev.data));
      return;
    }
    const msg = JSON.parse(ev.data);
    if (msg.type === "ready") {
      onStatus("connected: type to reach the guest (press Enter for a prompt)");
      term.focus();
    } else if (msg.type === "error") {
      onStatus(`refused: ${msg.detail}`, true);
    } else if (msg.type === "closed") {
      onStatus(`closed: ${msg.detail}`);
    }
  });
  ws.addEventListener("close", (ev) => {
    if (!closedByUs && ev.code === 1006) onStatus("disconnected", true);
  });
  const typing = term.onData((data) => {
    if (ws.readyState === WebSocket.OPEN) ws.send(encoder.encode(data));
  });
  return () => {
    closedByUs = true;
    typing.dispose();
    resize.disconnect();
    ws.close(1000);
    term.dispose();
  };
}
