// Shared browser code for the townhall pages: API calls, errors, the audience player,
// the stage microphone (WebRTC) and the stage WebSocket. Vanilla ES module, no build.

export const $ = (sel, root = document) => root.querySelector(sel);

/** Create an element: h("button", {class: "x", onclick: f}, "text", child). */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else if (k === "dataset") Object.assign(el.dataset, v);
    else if (v === true) el.setAttribute(k, "");
    else el.setAttribute(k, String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** A trace of what the page did, in order (the e2e test reads it). */
export const trace = (window.townhallTrace = window.townhallTrace || []);
export function note(event, extra = {}) {
  trace.push({ event, t: performance.now(), ...extra });
}

// -- errors -----------------------------------------------------------------------

export class ApiError extends Error {
  constructor(status, code, detail, retryAfter = null) {
    super(detail);
    this.status = status;
    this.code = code;
    this.detail = detail;
    this.retryAfter = retryAfter;
  }
}

/** Show a visible, dismissable error message in #errors (role=alert). */
export function showError(err, context = "") {
  const box = $("#errors");
  // A refused token is said in plain words, never in the token library's.
  const msg =
    err instanceof ApiError && err.status === 401
      ? `${linkProblem(err).title}. ${linkProblem(err).message}`
      : err instanceof ApiError
        ? err.detail
        : err?.message || String(err);
  const text = context ? `${context}: ${msg}` : msg;
  console.warn("[townhall]", text, err);
  if (!box) return;
  // Do not stack the same message over and over (reconnect loops).
  for (const item of box.children) {
    if (item.dataset.text === text) {
      box.append(item);
      return;
    }
  }
  const item = h(
    "div",
    { class: "error", dataset: { text } },
    h("span", {}, text),
    h("button", { class: "link", "aria-label": "Dismiss this message", onclick: () => item.remove() }, "✕"),
  );
  box.append(item);
  while (box.children.length > 4) box.firstElementChild.remove();
}

export function clearErrors() {
  const box = $("#errors");
  if (box) box.replaceChildren();
}

/**
 * The key this browser keeps for an invitation link's token ("" for other tokens): the
 * first client to take the stage with a link claims it with its key, and the server
 * refuses any other client (409). Kept in localStorage so reloads and tabs stay the holder.
 */
export function holderKey(token) {
  let claims = {};
  try {
    claims = JSON.parse(atob(token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/")));
  } catch {
    return "";
  }
  if (!Number.isInteger(claims.gen)) return "";
  const name = `townhall-holder:${claims.space}:${claims.sub}:${claims.gen}`;
  try {
    let key = localStorage.getItem(name);
    if (!key) {
      const bytes = crypto.getRandomValues(new Uint8Array(16));
      key = Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
      localStorage.setItem(name, key);
    }
    return key;
  } catch {
    return ""; // no storage: the link works until another client claims it
  }
}

/** Call the control API; a 4xx/5xx becomes an ApiError carrying the server's `detail`. */
export async function api(path, { method = "GET", token, body } = {}) {
  const headers = {};
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (token) headers.Authorization = `Bearer ${token}`;
  const holder = token ? holderKey(token) : "";
  if (holder) headers["X-Townhall-Holder"] = holder;
  let resp;
  try {
    resp = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (e) {
    throw new ApiError(0, "network", `cannot reach the server (${e.message})`);
  }
  let data = null;
  try {
    data = await resp.json();
  } catch {
    data = null;
  }
  if (!resp.ok) {
    throw new ApiError(
      resp.status,
      data?.error || "http_error",
      data?.detail || `${method} ${path} failed with HTTP ${resp.status}`,
      parseRetryAfter(resp.headers.get("Retry-After")),
    );
  }
  return data;
}

export function parseRetryAfter(value) {
  if (value === null || value === undefined) return null;
  const n = Number(value);
  return Number.isFinite(n) && n >= 0 ? n : null;
}

/** Capped exponential backoff with full jitter, in seconds. */
export function backoffDelay(attempt, retryAfterS) {
  return (retryAfterS || 0) + Math.random() * Math.min(30, 0.5 * 2 ** attempt);
}

// The reconnect schedule after a lost connection (the stage, the stream, the socket),
// the twin of townhall.peers.backoff.reconnect_delay: immediate first, then backing off
// to a cap, each plus up to a second of jitter so a crowd that lost the same process
// does not return in one burst. A server's longer Retry-After wins.
export const RECONNECT_STEPS_S = [0, 0.3, 1.2, 2.7, 4.8];
export const RECONNECT_CAP_S = 7;
export const RECONNECT_JITTER_S = 1;

/** Seconds to wait before reconnect `attempt` (0 = the first after a loss). */
export function reconnectDelay(attempt, retryAfterS = null, random = Math.random) {
  const step = attempt < RECONNECT_STEPS_S.length ? RECONNECT_STEPS_S[attempt] : RECONNECT_CAP_S;
  const delay = step + random() * RECONNECT_JITTER_S;
  return retryAfterS !== null && retryAfterS !== undefined ? Math.max(delay, retryAfterS) : delay;
}

/** Whether a refused request is worth retrying: no answer, busy, restarting, 5xx. */
export function worthRetrying(status) {
  return !status || [408, 409, 425, 429].includes(status) || status >= 500;
}

/** Test hooks: counters the reconnect logic keeps (window.townhallDebug). */
export const debug = (window.townhallDebug = window.townhallDebug || {
  stageRejoins: 0,
  stageLost: [],
  playerReconnects: 0,
  hlsRecoveries: 0,
  socketReconnects: 0,
});

// -- small UI helpers ---------------------------------------------------------------

export const REACTIONS = ["👏", "❤️", "😂", "🔥", "💯", "🙌", "👍", "😮"];

export function spaceIdFromPath() {
  const parts = location.pathname.split("/").filter(Boolean);
  return parts[0] === "s" ? decodeURIComponent(parts[1] || "") : "";
}

export function tokenFromFragment() {
  const params = new URLSearchParams(location.hash.slice(1));
  return params.get("t") || "";
}

export function listenLink(spaceId) {
  return `${location.origin}/s/${encodeURIComponent(spaceId)}`;
}

/** Share a link: the system share sheet on phones, else the clipboard; always visible. */
export async function shareLink(url, title, statusEl) {
  try {
    if (navigator.share && matchMedia("(pointer: coarse)").matches) {
      await navigator.share({ title, url });
      return;
    }
    await navigator.clipboard.writeText(url);
    if (statusEl) statusEl.textContent = `Link copied: ${url}`;
  } catch {
    if (statusEl) statusEl.textContent = `Share this link: ${url}`;
  }
}

/** After the end, poll the Space until its replay links appear (written within seconds). */
export async function waitForReplay(spaceId, info) {
  for (let attempt = 0; attempt < 6; attempt++) {
    try {
      info = await api(`/api/spaces/${spaceId}`);
      if (info.replay || info.cancelled) break;
    } catch (e) {
      showError(e, "Loading the replay");
    }
    await sleep(1000 * (attempt + 1));
  }
  return info;
}

export function formatCount(n) {
  n = Number(n || 0);
  if (n >= 1e6) return `${(n / 1e6).toFixed(n >= 1e7 ? 0 : 1)}M`;
  if (n >= 1e4) return `${Math.round(n / 1e3)}k`;
  return n.toLocaleString();
}

export function stateLabel(state) {
  return { scheduled: "Scheduled", live: "Live", ended: "Ended" }[state] || state || "…";
}

/** Render reaction buttons + tallies into `root`; `onReact(emoji)` is called on click. */
export function renderReactions(root, tallies, onReact) {
  if (!root.dataset.built) {
    root.dataset.built = "1";
    for (const emoji of REACTIONS) {
      root.append(
        h(
          "button",
          {
            class: "reaction",
            type: "button",
            "aria-label": `React ${emoji}`,
            dataset: { emoji },
            onclick: () => onReact(emoji),
          },
          h("span", { class: "emoji" }, emoji),
          " ",
          h("span", { class: "tally" }, "0"),
        ),
      );
    }
  }
  for (const btn of root.querySelectorAll("button.reaction")) {
    const n = (tallies || {})[btn.dataset.emoji] || 0;
    btn.querySelector(".tally").textContent = formatCount(n);
    // The accessible name starts with what the button shows (the emoji and its tally).
    btn.setAttribute("aria-label", `${btn.dataset.emoji} ${formatCount(n)}: react with ${btn.dataset.emoji}`);
  }
}

/** `url` with `key=value` added to its query. */
export function withQuery(url, key, value) {
  return `${url}${url.includes("?") ? "&" : "?"}${encodeURIComponent(key)}=${encodeURIComponent(value)}`;
}

/** Room events from the audience server (SSE), reconnecting on its own. */
export function roomEvents(url, onRoom, onStatus = () => {}) {
  let es = null;
  let closed = false;
  let attempt = 0;
  const open = () => {
    if (closed) return;
    es = new EventSource(url);
    es.addEventListener("room", (ev) => {
      attempt = 0;
      onStatus("open");
      try {
        onRoom(JSON.parse(ev.data));
      } catch (e) {
        console.warn("bad room event", e);
      }
    });
    es.onerror = () => {
      // EventSource retries by itself on a dropped connection, but gives up on an
      // HTTP error (404 before the start, 503 when full): retry with backoff then.
      if (es.readyState === EventSource.CLOSED) {
        onStatus("retrying");
        const delay = reconnectDelay(attempt++, 2) * 1000;
        setTimeout(open, delay);
      }
    };
  };
  open();
  return {
    close() {
      closed = true;
      if (es) es.close();
    },
  };
}

// -- the audience player ------------------------------------------------------------

/** Ask a URL for its status without downloading a body (the live Ogg never ends). */
async function probe(url) {
  const ctl = new AbortController();
  try {
    const resp = await fetch(url, { signal: ctl.signal, cache: "no-store" });
    const out = { ok: resp.ok, status: resp.status, retryAfter: parseRetryAfter(resp.headers.get("Retry-After")) };
    if (!resp.ok) {
      try {
        out.detail = (await resp.json()).detail;
      } catch {
        /* not JSON */
      }
    }
    ctl.abort();
    return out;
  } catch (e) {
    return { ok: false, status: 0, retryAfter: null, detail: e.message };
  }
}

/**
 * Plays the live program: LL-HLS through hls.js where MediaSource exists, native HLS
 * where the browser has it, else the Ogg/Opus stream in <audio>. 503s and failures
 * are retried with capped exponential backoff and full jitter. `stop()` really stops:
 * hls.js destroyed, the element paused and its source removed.
 */
export class AudiencePlayer {
  constructor(audio, { hlsUrl, oggUrl, onStatus = () => {} }) {
    this.audio = audio;
    this.hlsUrl = hlsUrl;
    this.oggUrl = oggUrl;
    this.onStatus = onStatus;
    this.hls = null;
    this.wanted = false;
    this.attempt = 0;
    this.generation = 0;
    this.hlsFailures = 0;
    this.mode = this._preferredMode();
    this.sessionId = "";
    this.held = false; // the Ogg stream is open before the start, waiting for the program
    // A watchdog: a player that says it plays but whose clock does not move is stuck
    // (a bad playlist, a lost connection): retry, and give up on HLS for the Ogg stream.
    this._lastTime = -1;
    this._stuckSince = 0;
    this._hlsRecoveries = 0; // in-place recoveries since the clock last moved
    setInterval(() => this._watch(), 500);
    this._started = false; // the current source has played: stalls count from here
    audio.addEventListener("playing", () => {
      this.attempt = 0;
      this._started = true;
      this._status("playing", "Playing live");
    });
    audio.addEventListener("waiting", () => {
      note("audio-waiting", { t: audio.currentTime });
      if (this.wanted && !this.held) this._status("buffering", "Buffering…");
    });
    audio.addEventListener("error", () => this.wanted && this.mode === "ogg" && this._retry("the stream stopped"));
    audio.addEventListener("ended", () => this.wanted && this._retry("the stream ended"));
  }

  // How long the clock may stand still before the player reconnects: the Ogg stream
  // flows five times a second, so 3 s is a lost connection (an audience worker gone);
  // hls.js gets longer, as it rides out a restarting stage's gap by itself. A source
  // that has not played yet gets STARTUP_MS (Chromium buffers seconds of Ogg first).
  static STALL_MS = { ogg: 3000, hls: 6000, "native-hls": 6000 };
  static STARTUP_MS = 10000;

  _watch() {
    if (!this.wanted || this.held || !(this.hls || this.audio.getAttribute("src"))) {
      this._stuckSince = 0;
      return;
    }
    const now = performance.now();
    const t = this.audio.currentTime;
    if (t !== this._lastTime) {
      this._lastTime = t;
      this._stuckSince = now;
      this._hlsRecoveries = 0;
      return;
    }
    if (!this._stuckSince) this._stuckSince = now;
    const limit = this._started ? AudiencePlayer.STALL_MS[this.mode] || 6000 : AudiencePlayer.STARTUP_MS;
    if (now - this._stuckSince > limit) {
      this._stuckSince = 0;
      note("player-stalled", { mode: this.mode, t });
      if (this.hls && this._hlsRecoveries < 1) {
        // First try in place: hls.js reloads from the live edge, keeping the buffer.
        this._hlsRecoveries += 1;
        debug.hlsRecoveries += 1;
        this.hls.startLoad(-1);
        return;
      }
      if (this.mode !== "ogg") {
        this.hlsFailures += 1;
        if (this.hlsFailures >= 2) this.mode = "ogg";
      }
      this._retry(`no audio for ${Math.round(limit / 1000)} s`);
    }
  }

  _url(base) {
    // Name this player's session on the audience port (honest counts across tabs).
    const url = this.sessionId ? withQuery(base, "sid", this.sessionId) : base;
    // A held stream's page is counted among the waiting by its SSE stream already.
    return this.held && base === this.oggUrl ? withQuery(url, "count", "0") : url;
  }

  /**
   * Before the start, where this player plays the Ogg stream: open it now and ask it to
   * play. The audience port holds it (200 and the head, no byte) until the program
   * begins, so at Go live the audio just flows: no request is made in the start's rush,
   * and a crowd of waiting pages is as cheap to start as the players that held the same
   * URL. Held, the watchdog waits (no audio is expected) and a dropped hold is opened
   * again. False where the player plays LL-HLS (hls.js, native HLS): such a page starts
   * at Go live (`play()`), because Chromium's Ogg demuxer starts a stream only after
   * tens of KB, which a held stream gets at 4 KB/s from Go live: 9 s before it played,
   * against about 3 s for hls.js; and hls.js cannot hold a playlist request for long.
   */
  hold() {
    if (this.mode !== "ogg" || !this.audio.canPlayType('audio/ogg; codecs="opus"')) return false;
    if (this.wanted) return true;
    this.held = true;
    this.wanted = true;
    this.attempt = 0;
    const gen = ++this.generation;
    this.audio.preload = "auto"; // open it now, even if autoplay is refused below
    this._attach();
    this.audio.dataset.held = "1";
    this._status("held", "Waiting for the host to start…");
    note("stream-held", { url: this.audio.getAttribute("src") });
    this.audio.play().catch((e) => {
      if (e.name !== "NotAllowedError" || gen !== this.generation) return;
      // Autoplay refused: a stream nobody plays would fill its buffer and stall, so let
      // it go. The page starts at Go live as one that holds no stream: "Tap to listen".
      this.wanted = this.held = false;
      this.generation += 1;
      this._detach();
      delete this.audio.dataset.held;
      this.mode = this._preferredMode();
      this._status("waiting", "Waiting for the host to start…");
      note("stream-hold-refused");
    });
    return true;
  }

  /** The Space went live: a held stream's audio is on its way; the watchdog counts. */
  released() {
    if (!this.held) return;
    this.held = false;
    this._stuckSince = 0;
    delete this.audio.dataset.held;
    if (!this._started) this._status("connecting", "Starting…");
  }

  _preferredMode() {
    if (window.Hls && window.Hls.isSupported()) return "hls";
    // Native HLS only where there is no MediaSource (iOS Safari). Chromium answers
    // canPlayType for HLS too, but its native player stalls on low-latency playlists.
    const mse = window.MediaSource || window.ManagedMediaSource;
    if (!mse && this.audio.canPlayType("application/vnd.apple.mpegurl")) return "native-hls";
    return "ogg";
  }

  _status(state, text) {
    document.body.dataset.audience = state;
    this.audio.dataset.mode = this.mode;
    this.onStatus(state, text);
  }

  get playing() {
    return this.wanted;
  }

  async play() {
    this.wanted = true;
    this.attempt = 0;
    const gen = ++this.generation;
    this._status("connecting", "Connecting…");
    await this._start(gen);
  }

  async _start(gen) {
    while (this.wanted && gen === this.generation) {
      const url = this._url(this.mode === "ogg" ? this.oggUrl : this.hlsUrl);
      const p = await probe(url);
      if (!this.wanted || gen !== this.generation) return;
      if (p.ok) break;
      const retryAfter = p.status === 503 ? (p.retryAfter ?? 5) : null;
      const delay = reconnectDelay(this.attempt++, retryAfter);
      const why =
        p.status === 503
          ? "The audience server is busy"
          : p.status === 404
            ? "The Space is not live yet"
            : `Cannot reach the stream${p.detail ? ` (${p.detail})` : ""}`;
      this._status("retrying", `${why}; retrying in ${Math.ceil(delay)} s…`);
      await sleep(delay * 1000);
    }
    if (!this.wanted || gen !== this.generation) return;
    this._attach();
    try {
      await this.audio.play();
    } catch (e) {
      if (e.name === "NotAllowedError") this._status("blocked", "Tap Play to listen (autoplay was blocked)");
      else if (e.name !== "AbortError") this._status("error", `Playback failed: ${e.message}`);
    }
  }

  _attach() {
    this._detach();
    this._started = false;
    this.audio.dataset.mode = this.mode;
    if (this.mode === "hls") {
      const hls = new window.Hls({ lowLatencyMode: true, backBufferLength: 30 });
      this.hls = hls;
      hls.on(window.Hls.Events.ERROR, (_ev, data) => {
        note("hls-error", { details: data.details, fatal: !!data.fatal });
        if (!data.fatal || hls !== this.hls) return;
        if (this._recoverHls(hls, data)) return;
        this.hlsFailures += 1;
        if (this.hlsFailures >= 3) this.mode = "ogg"; // fall back to the Ogg stream
        this._retry(`HLS ${data.details}`);
      });
      hls.loadSource(this._url(this.hlsUrl));
      hls.attachMedia(this.audio);
    } else {
      // CORS (the audience port allows any origin): the page's own audio graph (a level
      // meter, a test's analyser) hears the stream, which a cross-origin source hides.
      this.audio.crossOrigin = "anonymous";
      this.audio.src = this._url(this.mode === "ogg" ? this.oggUrl : this.hlsUrl);
    }
  }

  /**
   * Recover hls.js in place from a fatal error, keeping what is buffered: a network
   * error (an audience worker gone, the playlist refused while a stage restarts) loads
   * again on the reconnect schedule; a media error (a discontinuity the decoder
   * choked on) resets the media pipeline. False: rebuild the player instead.
   */
  _recoverHls(hls, data) {
    if (this._hlsRecoveries >= 4) return false;
    const Hls = window.Hls;
    const attempt = this._hlsRecoveries++;
    debug.hlsRecoveries += 1;
    if (data.type === Hls.ErrorTypes.NETWORK_ERROR) {
      const gen = this.generation;
      setTimeout(() => {
        if (hls === this.hls && gen === this.generation) hls.startLoad(-1);
      }, reconnectDelay(attempt) * 1000);
      this._status("retrying", "Reconnecting…");
      return true;
    }
    if (data.type === Hls.ErrorTypes.MEDIA_ERROR) {
      hls.recoverMediaError();
      return true;
    }
    return false;
  }

  _detach() {
    if (this.hls) {
      const hls = this.hls;
      this.hls = null;
      hls.destroy();
    }
    this.audio.pause();
    this.audio.removeAttribute("src");
    this.audio.srcObject = null;
    this.audio.load();
  }

  async _retry(why) {
    if (!this.wanted) return;
    const gen = ++this.generation;
    this._detach();
    debug.playerReconnects += 1;
    this._hlsRecoveries = 0;
    const delay = reconnectDelay(this.attempt++, null);
    this._status("retrying", `Reconnecting (${why}) in ${Math.ceil(delay)} s…`);
    await sleep(delay * 1000);
    if (this.wanted && gen === this.generation) await this._start(gen);
  }

  /** Stop for real: nothing of the audience stream may keep playing (e.g. into a mic). */
  stop(reason = "Stopped") {
    this.wanted = false;
    this.held = false;
    this.generation += 1;
    this._detach();
    this._status("stopped", reason);
    note("audience-stopped", { paused: this.audio.paused, src: this.audio.getAttribute("src") || "" });
  }
}

// -- the stage microphone -----------------------------------------------------------

function iceGatheringComplete(pc, timeoutMs = 4000) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      pc.removeEventListener("icegatheringstatechange", check);
      resolve();
    };
    const check = () => pc.iceGatheringState === "complete" && done();
    pc.addEventListener("icegatheringstatechange", check);
    setTimeout(done, timeoutMs); // send what we have; host candidates come first
  });
}

/**
 * Whether the stage is lost, from what a connection shows (times in ms): the stage
 * sends every seat its mix-minus every 20 ms, silence included, so packets that stop
 * arriving mean its process is gone. Returns why, or null while the stage is there.
 */
export function stageLost({ now, createdAt, connectedAt, lastPacketAt, state, stateSince }, limits = STAGE_LIMITS) {
  if (state === "closed") return "the connection closed";
  if ((state === "failed" || state === "disconnected") && now - stateSince > limits.stateMs)
    return `the connection ${state} ${Math.round((now - stateSince) / 100) / 10} s ago`;
  if (connectedAt === null) {
    return now - createdAt > limits.connectMs ? "the connection never opened" : null;
  }
  const heard = Math.max(lastPacketAt || 0, connectedAt);
  if (now - heard > limits.silenceMs) return `no audio from the stage for ${Math.round((now - heard) / 100) / 10} s`;
  return null;
}
export const STAGE_LIMITS = { silenceMs: 2000, stateMs: 2000, connectMs: 10000, checkMs: 500, freshMs: 1500 };

/**
 * A seat's audio: the microphone up to the server (WebRTC, non-trickle ICE) and the
 * mix-minus (everyone but you) back down into `mixAudio`.
 *
 * It stays on stage by itself: a watchdog replaces a connection whose stage is lost
 * (see `stageLost`, or the page calls `stageRestarting()` when the socket says so) with
 * a new RTCPeerConnection on the reconnect schedule, re-offering the same microphone
 * stream (the person is not asked again). The server runs a fresh mic check.
 */
export class StageMic {
  constructor({ spaceId, token, mixAudio, onState = () => {}, onRefused = () => {} }) {
    this.spaceId = spaceId;
    this.token = token;
    this.mixAudio = mixAudio;
    this.onState = onState;
    this.onRefused = onRefused;
    this.pc = null;
    this.stream = null;
    this.muted = false;
    this.reconnecting = false;
    this.rejoins = 0;
    this.lastRejoinMs = null;
    this.lastRejoinAt = null;
    this.lostReason = null;
    this._generation = 0;
    this._watchTimer = null;
    this._conn = null; // what the watchdog knows of the current connection
  }

  get open() {
    return this.pc !== null || this.reconnecting;
  }

  async connect() {
    if (this.open) return;
    this.onState("opening");
    note("mic-opening", {
      audiencePlaying: Array.from(document.querySelectorAll("audio.audience")).some(
        (a) => !a.paused || !!a.getAttribute("src") || !!a.srcObject,
      ),
    });
    try {
      this.stream = await navigator.mediaDevices.getUserMedia({
        audio: { echoCancellation: true, noiseSuppression: false, autoGainControl: true },
        video: false,
      });
    } catch (e) {
      this.onState("off");
      const why = e.name === "NotAllowedError" ? "microphone permission was denied" : e.message;
      throw new ApiError(0, "microphone", `Cannot open the microphone: ${why}`);
    }
    note("mic-opened");
    for (const track of this.stream.getAudioTracks()) track.enabled = !this.muted;
    try {
      await this._offer();
    } catch (e) {
      this.close();
      throw e;
    }
    this._watch();
  }

  /** A new RTCPeerConnection carrying the microphone stream, offered to the stage. */
  async _offer() {
    const pc = new RTCPeerConnection({ iceServers: [] });
    this.pc = pc;
    const now = performance.now();
    const conn = { pc, createdAt: now, connectedAt: null, lastPacketAt: null, packets: 0, state: "new", stateSince: now };
    this._conn = conn;
    for (const track of this.stream.getAudioTracks()) pc.addTrack(track, this.stream);
    pc.addEventListener("track", (ev) => {
      if (pc !== this.pc) return;
      this.mixAudio.srcObject = ev.streams[0] || new MediaStream([ev.track]);
      this.mixAudio.play().catch(() => {});
    });
    pc.addEventListener("connectionstatechange", () => {
      if (pc !== this.pc) return;
      conn.state = pc.connectionState;
      conn.stateSince = performance.now();
      if (pc.connectionState === "connected" && conn.connectedAt === null) conn.connectedAt = conn.stateSince;
      if (!this.reconnecting) this.onState(pc.connectionState);
    });
    await pc.setLocalDescription(await pc.createOffer());
    await iceGatheringComplete(pc);
    const answer = await api(`/api/spaces/${encodeURIComponent(this.spaceId)}/stage/offer`, {
      method: "POST",
      token: this.token,
      body: { sdp: pc.localDescription.sdp, type: "offer" },
    });
    if (pc !== this.pc) return;
    await pc.setRemoteDescription(answer);
    this.onState("connecting");
  }

  _watch() {
    clearInterval(this._watchTimer);
    this._watchTimer = setInterval(() => this._check(), STAGE_LIMITS.checkMs);
  }

  async _check() {
    const conn = this._conn;
    if (!conn || this.reconnecting || conn.pc !== this.pc) return;
    const received = await this.packetsReceived();
    if (conn !== this._conn || this.reconnecting) return;
    const now = performance.now();
    if (received > conn.packets) {
      conn.packets = received;
      conn.lastPacketAt = now;
    }
    // A connection closed on this side fires no connectionstatechange: read the state.
    if (conn.pc.connectionState !== conn.state) {
      conn.state = conn.pc.connectionState;
      conn.stateSince = now;
    }
    const why = stageLost({ now, ...conn });
    if (why) this.stageRestarting(why);
  }

  /**
   * The socket says the stage restarted. A connection made in the last moments is
   * already with the new stage (the watchdog was quicker than the message): keep it.
   */
  onStageRestarting() {
    if (this.lastRejoinAt !== null && performance.now() - this.lastRejoinAt < STAGE_LIMITS.freshMs) return;
    this.stageRestarting("the stage is restarting");
  }

  /** The stage is gone (the socket said so, or the watchdog saw it): rejoin it. */
  async stageRestarting(why = "the stage restarted") {
    if (!this.stream || this.reconnecting) return;
    this.reconnecting = true;
    this.lostReason = why;
    const gen = ++this._generation;
    const lostAt = performance.now();
    debug.stageLost.push({ why, t: lostAt });
    note("stage-lost", { why });
    this.onState("reconnecting");
    let attempt = 0;
    let retryAfter = null;
    while (this.stream && gen === this._generation) {
      this._dropConnection();
      await sleep(reconnectDelay(attempt, retryAfter) * 1000);
      if (!this.stream || gen !== this._generation) return;
      try {
        await this._offer();
      } catch (e) {
        if (e instanceof ApiError && !worthRetrying(e.status)) {
          note("stage-refused", { status: e.status });
          this.reconnecting = false;
          this.close();
          this.onRefused(e);
          return;
        }
        attempt += 1;
        retryAfter = e instanceof ApiError ? e.retryAfter : null;
        continue;
      }
      this.reconnecting = false;
      this.rejoins += 1;
      debug.stageRejoins += 1;
      this.lastRejoinAt = performance.now();
      this.lastRejoinMs = this.lastRejoinAt - lostAt;
      note("stage-rejoined", { ms: this.lastRejoinMs });
      this.onState(this.pc ? this.pc.connectionState : "off");
      return;
    }
  }

  _dropConnection() {
    const pc = this.pc;
    this.pc = null;
    this._conn = null;
    if (pc) pc.close();
  }

  setMuted(muted) {
    this.muted = muted;
    if (this.stream) for (const t of this.stream.getAudioTracks()) t.enabled = !muted;
  }

  /**
   * Mute or unmute yourself: locally first when muting (a mute must be instant), and
   * only after the room agrees when unmuting. `seat()` reads your seat from the room;
   * `send(command)` posts it. On failure the mic follows the room's view again.
   */
  async toggleSelfMute(seat, send) {
    const current = seat();
    if (!current) return;
    const muting = !current.muted;
    try {
      if (muting) this.setMuted(true);
      await send(muting ? "mute" : "unmute");
      if (!muting) this.setMuted(false);
    } catch (e) {
      showError(e, muting ? "Mute" : "Unmute");
      this.setMuted(!!seat()?.muted);
    }
  }

  async packetsSent() {
    return this._rtpCount("outbound-rtp", "packetsSent");
  }

  async packetsReceived() {
    return this._rtpCount("inbound-rtp", "packetsReceived");
  }

  async _rtpCount(type, field) {
    const pc = this.pc;
    if (!pc) return 0;
    let n = 0;
    try {
      (await pc.getStats()).forEach((s) => {
        if (s.type === type && s.kind === "audio") n += s[field] || 0;
      });
    } catch {
      return 0; // closed meanwhile
    }
    return n;
  }

  close() {
    this._generation += 1;
    this.reconnecting = false;
    clearInterval(this._watchTimer);
    this._watchTimer = null;
    this._dropConnection();
    if (this.stream) for (const t of this.stream.getTracks()) t.stop();
    this.stream = null;
    this.mixAudio.pause();
    this.mixAudio.srcObject = null;
    this.onState("off");
    note("mic-closed");
  }
}

// -- the stage WebSocket --------------------------------------------------------------

/** The push socket for people on stage (and invited listeners); reconnects with backoff. */
export function stageSocket(spaceId, token, { onMessage, onStatus = () => {} }) {
  let ws = null;
  let closed = false;
  let attempt = 0;
  let ping = null;
  const url = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/api/spaces/${encodeURIComponent(
    spaceId,
  )}/ws?token=${encodeURIComponent(token)}&holder=${encodeURIComponent(holderKey(token))}`;
  const open = () => {
    if (closed) return;
    ws = new WebSocket(url);
    ws.onopen = () => {
      // The first message is a hello with the whole room: the page resyncs from it.
      attempt = 0;
      onStatus("open");
      ping = setInterval(() => ws.readyState === 1 && ws.send("ping"), 20000);
    };
    ws.onmessage = (ev) => {
      try {
        onMessage(JSON.parse(ev.data));
      } catch (e) {
        console.warn("bad socket message", e);
      }
    };
    ws.onclose = (ev) => {
      clearInterval(ping);
      if (closed) return;
      // 4000 + HTTP status: 4401/4403/4404/4409 will not get better by retrying.
      if (ev.code >= 4400 && ev.code < 4500 && ev.code !== 4408) {
        onStatus("refused", ev.reason || `refused (${ev.code - 4000})`);
        return;
      }
      onStatus("reconnecting");
      debug.socketReconnects += 1;
      setTimeout(open, reconnectDelay(attempt++) * 1000);
    };
  };
  open();
  return {
    close() {
      closed = true;
      clearInterval(ping);
      if (ws) ws.close();
    },
  };
}

/** Level in dBFS to a 0..100 meter width. */
export function meterPercent(dbfs) {
  if (dbfs === null || dbfs === undefined || !Number.isFinite(dbfs)) return 0;
  return Math.max(0, Math.min(100, ((dbfs + 60) / 60) * 100));
}

// -- pages for people: plain words for errors, dialogs, copy buttons ---------------------

/** What a refused link means, in plain words (never a library's message). */
export function linkProblem(err) {
  const detail = (err?.detail || err?.message || "").toLowerCase();
  if (err instanceof ApiError && err.status === 404)
    return { title: "This Space does not exist", message: "Nothing is found at this address. Check the link you were given." };
  if (detail.includes("expired"))
    return { title: "This link has expired", message: "Ask the host for a new link." };
  if (detail.includes("another space"))
    return { title: "This link is for another Space", message: "The link's address and its key do not match. Open the full link you were given, or ask the host for a new one." };
  if (detail.includes("removed"))
    return { title: "You were removed from this Space", message: "The host removed you; this link no longer works here." };
  if (detail.includes("revoked"))
    return { title: "This link was withdrawn", message: "The host withdrew this link. Ask them for a new one." };
  return { title: "This link is not valid", message: "It may be cut short or mistyped: open the full link you were given (it ends in #t=…), or ask the host for a new one." };
}

/** Replace the page with a clear problem card (a bad link, a removed person). */
export function showProblem({ title, message }, extra = null) {
  const main = $("main");
  const heading = h("h1", { id: "problem-h", tabindex: "-1" }, title);
  main.replaceChildren(
    h(
      "section",
      { class: "card problem", "aria-labelledby": "problem-h" },
      heading,
      h("p", { id: "problem-text" }, message),
      extra,
      h("p", {}, h("a", { class: "button primary", href: "/" }, "See live and upcoming Spaces")),
    ),
  );
  document.body.dataset.page = "problem";
  document.title = `${title} · townhall`;
  heading.focus();
}

/**
 * Ask before a destructive action, in a modal <dialog>; resolves true to go ahead.
 * Focus returns to what had it before (the button that asked), whatever the answer.
 */
export function confirmAction(question, confirmLabel, detail = "") {
  const returnTo = document.activeElement;
  return new Promise((resolve) => {
    const dialog = h(
      "dialog",
      { class: "confirm", "aria-labelledby": "confirm-q", "aria-describedby": detail ? "confirm-d" : null },
      h("h2", { id: "confirm-q" }, question),
      detail ? h("p", { id: "confirm-d" }, detail) : null,
      h(
        "form",
        { method: "dialog", class: "row" },
        h("button", { value: "cancel", type: "submit", id: "confirm-cancel" }, "Cancel"),
        h("button", { value: "ok", type: "submit", class: "danger", id: "confirm-ok" }, confirmLabel),
      ),
    );
    document.body.append(dialog);
    dialog.addEventListener("close", () => {
      const ok = dialog.returnValue === "ok";
      dialog.remove();
      if (returnTo && returnTo.isConnected && typeof returnTo.focus === "function") returnTo.focus();
      else $("main h1")?.focus?.();
      resolve(ok);
    });
    dialog.showModal();
    $("#confirm-cancel", dialog).focus(); // the safe choice has the focus
  });
}

/** A link shown in full (it wraps) with a Copy button that says what it did. */
export function copyableLink(url, label, id) {
  const status = h("span", { class: "status", "aria-live": "polite" });
  return h(
    "div",
    { class: "copyable", dataset: { link: id } },
    h("p", { class: "linkbox" }, h("a", { href: url, id }, url)),
    h(
      "div",
      { class: "row" },
      h(
        "button",
        {
          type: "button",
          class: "small",
          "aria-label": `Copy the ${label}`,
          onclick: async () => {
            try {
              await navigator.clipboard.writeText(url);
              status.textContent = "Copied.";
            } catch {
              status.textContent = "Select the link above and copy it.";
            }
          },
        },
        "Copy",
      ),
      status,
    ),
  );
}

export function formatWhen(unixS) {
  return new Date(unixS * 1000).toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
}

/** 3725 -> "1:02:05", 65 -> "1:05". */
export function formatDuration(seconds) {
  if (!Number.isFinite(seconds) || seconds < 0) return "–:––";
  const s = Math.floor(seconds % 60);
  const m = Math.floor(seconds / 60) % 60;
  const hours = Math.floor(seconds / 3600);
  const mm = hours ? String(m).padStart(2, "0") : String(m);
  return `${hours ? `${hours}:` : ""}${mm}:${String(s).padStart(2, "0")}`;
}

/**
 * How far behind live the player is, in seconds: hls.js knows it (the live edge from
 * the playlist); for the Ogg stream, what is buffered past the playhead, as the server
 * sends the live edge.
 */
export function behindLive(player) {
  const hls = player.hls;
  if (hls && Number.isFinite(hls.latency) && hls.latency > 0) return hls.latency;
  const a = player.audio;
  if (!a.buffered.length) return null;
  return Math.max(0, a.buffered.end(a.buffered.length - 1) - a.currentTime);
}

/**
 * Re-render a list without losing the keyboard focus: the button that had it (by its
 * row's data-id and its data-action) has it again in the new rows.
 */
export function keepFocus(list, rerender) {
  const had = document.activeElement;
  const row = had && list.contains(had) ? had.closest("[data-id]") : null;
  const key = row ? [row.dataset.id, had.dataset.action] : null;
  rerender();
  if (!key) return;
  const again = [...list.querySelectorAll("[data-id]")].find((li) => li.dataset.id === key[0]);
  const target = again?.querySelector(`[data-action="${key[1]}"]`) || again;
  if (target && target !== document.activeElement) target.focus?.();
}
