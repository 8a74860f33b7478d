// The terminal page: one websocket to the web server (/ws/sandboxes/<id>/terminal/), never to
// tmux. The server sends the current screen first, then live output numbered by seq.
(function () {
  "use strict";
  const cfg = JSON.parse(document.getElementById("term-settings").textContent);
  const $ = (id) => document.getElementById(id);
  const term = new Terminal({ cursorBlink: true, scrollback: 5000, fontSize: 14,
    fontFamily: "DejaVu Sans Mono, Liberation Mono, monospace" });
  const fit = new FitAddon.FitAddon();
  term.loadAddon(fit);
  term.open($("terminal"));
  window.vsbTerminal = term; // for people debugging in the console, and for the browser test
  let ws = null, role = cfg.role, me = null, takenBy = null, pane = null, lastSeq = 0, retry = 0;
  let closed = false;

  function status(text) { $("status").textContent = text; }
  function showRole() {
    const badge = $("role");
    badge.textContent = takenBy ? `${role} · taken over by ${takenBy}` : role;
    badge.className = "badge " + (takenBy ? "taken" : role);
    $("takeover").hidden = role === "control";
    $("release").hidden = !(takenBy && takenBy === me);
  }
  function send(obj) { if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(obj)); }

  function connect() {
    const proto = location.protocol === "https:" ? "wss" : "ws";
    let url = `${proto}://${location.host}${cfg.wsPath}?session=${encodeURIComponent(cfg.session)}`;
    if (pane) url += `&pane=${encodeURIComponent(pane)}`;
    ws = new WebSocket(url);
    ws.onopen = () => { retry = 0; status("connected"); };
    ws.onmessage = (ev) => {
      const m = JSON.parse(ev.data);
      switch (m.type) {
        case "hello":
          role = m.role; me = m.user; takenBy = m.taken_over_by; showRole(); break;
        case "screen":
          pane = m.pane; lastSeq = m.seq;
          term.reset();
          term.resize(m.cols, m.rows);
          term.write(m.data);
          term.write(`\x1b[${m.cursor[1] + 1};${m.cursor[0] + 1}H`);
          status(m.dead ? "the connection to the sandbox ended: Reconnect" : `pane ${m.pane}`);
          break;
        case "output":
          if (m.seq > lastSeq) { lastSeq = m.seq; term.write(m.data); }
          break;
        case "control":
          takenBy = m.taken_over_by;
          // The operator who took over types; everyone else but the owner watches.
          if (takenBy === me) role = "control";
          else if (cfg.role !== "control") role = "view";
          showRole(); break;
        case "error":
          status(m.message || m.code);
          if (m.code === "read_only") term.write("\x07");
          break;
      }
    };
    ws.onclose = (ev) => {
      if (ev.code === 4403) { status("you may not see this sandbox's terminal"); closed = true; return; }
      if (ev.code === 4409) { status("the sandbox is not running"); closed = true; return; }
      if (closed) return;
      status("disconnected; reconnecting…");
      setTimeout(connect, Math.min(5000, 300 * 2 ** retry++));
    };
  }

  term.onData((data) => send({ type: "input", data }));
  $("takeover").onclick = () => send({ type: "takeover" });
  $("release").onclick = () => send({ type: "release" });
  $("respawn").onclick = () => send({ type: "respawn" });
  $("fit").onclick = () => {
    const dims = fit.proposeDimensions();
    if (dims) { send({ type: "resize", cols: dims.cols, rows: dims.rows }); setTimeout(() => send({ type: "snapshot" }), 150); }
  };
  showRole();
  connect();
  term.focus();
})();
