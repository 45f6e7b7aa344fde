// The waiting room: what a listener sees before the start, and the start itself.
//
// Everything here comes from the room snapshots of the audience port's SSE stream (one
// push connection, no polling): the host, the scheduled time, the host's message and
// how many are waiting. The countdown runs on the page's own clock.
//
// The start: a page whose player plays the Ogg stream holds it open while it waits (the
// audience port answers 200 and sends nothing until the program begins), so at Go live
// the audio just flows: `onAir` is called at once and nothing connects. What the page
// then asks of the control API (its heartbeats: `onLive`) waits a random delay, so a
// crowd told at the same instant does not send its first heartbeats at the same
// instant. A page that holds no stream (LL-HLS: see AudiencePlayer.hold) starts its
// player in `onLive`, after that delay, so its crowd arrives as a ramp.
import { $, h, note } from "/static/common.js";

// Every waiting page runs `onLive` within this many seconds of learning of the start,
// unless the server says a wider window (`start_spread_s`: the pages that hold no stream
// divided by the joins a second the audience port takes). A crowd spread over 1.5 s
// arrives as a ramp, not a wall, and a page that opens its stream then still hears the
// first audio well inside 3 s (the event ≤ 0.25 s, the stream's first page ≈ 0.2 s, the
// browser's start-up buffer after that).
export const START_SPREAD_S = 1.5;

/** "in 3 min 20 s", "in 2 h 5 min", "in 12 s": the time left, coarse when far. */
export function formatCountdown(seconds) {
  const s = Math.max(0, Math.round(seconds));
  if (s >= 3600) return `in ${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  if (s >= 60) return `in ${Math.floor(s / 60)} min ${s % 60} s`;
  return `in ${s} s`;
}

/** What the waiting card says at unix time `now` (seconds) about a scheduled Space. */
export function waitingText(room, now) {
  const at = room?.scheduled_at;
  if (!at) return { late: false, text: "Starting soon — the host will start it shortly." };
  if (now < at) return { late: false, text: `Starts ${formatCountdown(at - now)}` };
  return { late: true, text: "Running late — the host has been notified." };
}

export class WaitingRoom {
  /**
   * onAir(): the Space went live (called once, at once: a held stream plays now);
   * onLive(): start the player, or its heartbeats (called once, after the random delay);
   * onTap(): play after a user gesture, when the browser blocked autoplay.
   */
  constructor({ onAir = () => {}, onLive, onTap, random = Math.random, spreadS = START_SPREAD_S }) {
    this.onAir = onAir;
    this.onLive = onLive;
    this.onTap = onTap;
    this.random = random;
    this.spreadS = spreadS;
    this.room = null;
    this.sawWaiting = false; // only a page that waited starts by itself
    this.startTimer = null;
    this.clock = null;
    this.card = null;
  }

  /** A public snapshot (the SSE stream, or the description's `room` at load). */
  update(room) {
    if (!room) return;
    this.room = room;
    if (room.state === "scheduled") {
      this.sawWaiting = true;
      if (room.start_spread_s > 0) this.spreadS = room.start_spread_s;
      this._render();
      if (!this.clock) this.clock = setInterval(() => this._render(), 1000);
      return;
    }
    this._stopClock();
    if (this.card) this.card.hidden = true;
    if (room.state === "live" && this.sawWaiting && this.startTimer === null) {
      const delayMs = Math.round(this.random() * this.spreadS * 1000);
      note("waiting-live", { delayMs });
      document.body.dataset.waiting = "starting";
      this.onAir();
      this.startTimer = setTimeout(() => {
        document.body.dataset.waiting = "started";
        this.onLive();
      }, delayMs);
    }
  }

  /** The player's state: a blocked autoplay shows the big "Tap to listen". */
  playerStatus(state) {
    const tap = this._tapButton();
    tap.hidden = state !== "blocked";
    if (state === "blocked") {
      document.body.dataset.waiting = "blocked";
      tap.focus();
    }
  }

  _stopClock() {
    clearInterval(this.clock);
    this.clock = null;
  }

  _ensureCard() {
    if (this.card) return this.card;
    const card = h(
      "section",
      { id: "waiting", class: "card waiting", "aria-labelledby": "waiting-h" },
      h("h2", { id: "waiting-h" }, "Waiting room"),
      h("p", { id: "waiting-host", class: "host" }),
      h("p", { id: "waiting-when", class: "when", role: "timer", "aria-live": "off" }),
      h("p", { id: "waiting-message", class: "message", "aria-live": "polite" }),
      h("p", { id: "waiting-count", class: "status", "aria-live": "polite" }),
      h("p", { class: "status" }, "This page starts playing by itself when the Space goes live."),
    );
    const player = $("#player-card");
    if (player) player.before(card);
    else document.querySelector("main")?.append(card);
    this.card = card;
    return card;
  }

  _tapButton() {
    let tap = $("#tap-to-listen");
    if (!tap) {
      tap = h(
        "button",
        { id: "tap-to-listen", class: "primary big", type: "button", hidden: true, onclick: () => this._tapped() },
        "▶ Tap to listen",
      );
      const anchor = $("#player-card .row") || $("main");
      anchor.prepend(tap);
    }
    return tap;
  }

  _tapped() {
    this._tapButton().hidden = true;
    document.body.dataset.waiting = "started";
    this.onTap();
  }

  _render() {
    const room = this.room;
    const card = this._ensureCard();
    card.hidden = false;
    document.body.dataset.waiting = "waiting";
    const host = room.host_name || (room.stage || []).find((s) => s.role === "host")?.name || "";
    $("#waiting-host", card).textContent = host ? `Hosted by ${host}` : "";
    const { late, text } = waitingText(room, Date.now() / 1000);
    const when = $("#waiting-when", card);
    when.textContent = text;
    when.className = late ? "when late" : "when";
    card.dataset.late = late ? "1" : "0";
    const message = (room.late_message || "").trim();
    const msg = $("#waiting-message", card);
    msg.hidden = !message;
    msg.textContent = message ? `Message from the host: “${message}”` : "";
    const n = room.waiting_now || 0;
    $("#waiting-count", card).textContent = n === 1 ? "1 person is waiting" : `${n.toLocaleString()} people are waiting`;
  }
}

/**
 * The host's side, on the stage page: how many wait, how late it is, and a message for
 * them. `post(message)` sends it (POST /api/spaces/{id}/late_message).
 */
export class HostWaitingControl {
  constructor({ post, anchor }) {
    this.post = post;
    this.anchor = anchor;
    this.card = null;
    this.room = null;
    this.clock = null;
  }

  update(room) {
    if (!room) return;
    this.room = room;
    const waiting = room.state === "scheduled";
    if (!waiting) {
      clearInterval(this.clock);
      this.clock = null;
      if (this.card) this.card.hidden = true;
      return;
    }
    this._ensureCard().hidden = false;
    this._render();
    if (!this.clock) this.clock = setInterval(() => this._render(), 1000);
  }

  _ensureCard() {
    if (this.card) return this.card;
    const input = h("input", { id: "late-message", name: "message", maxlength: "280", placeholder: "e.g. Starting in 10 minutes — thanks for waiting!" });
    const form = h(
      "form",
      { id: "late-form", class: "row" },
      h("div", { class: "field" }, h("label", { for: "late-message" }, "Message to those waiting"), input),
      h("button", { class: "primary", type: "submit" }, "Post"),
    );
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const status = $("#late-status", this.card);
      try {
        const out = await this.post(input.value.trim());
        status.textContent = out.late_message ? "Posted: listeners see it now." : "Message removed.";
      } catch (e) {
        status.textContent = `Not posted: ${e.message}`;
      }
    });
    this.card = h(
      "section",
      { id: "host-waiting", class: "card waiting", "aria-labelledby": "host-waiting-h" },
      h("h2", { id: "host-waiting-h" }, "Waiting room"),
      h("p", { id: "host-waiting-when", class: "when" }),
      h("p", { id: "host-waiting-count", class: "status" }),
      form,
      h("p", { id: "late-status", class: "status", "aria-live": "polite" }),
    );
    this.anchor.after(this.card);
    return this.card;
  }

  _render() {
    const room = this.room;
    const { late, text } = waitingText(room, Date.now() / 1000);
    const when = $("#host-waiting-when", this.card);
    when.textContent = late ? "You're running late: listeners see “Running late” and your message." : text;
    when.className = late ? "when late" : "when";
    const n = room.waiting_now || 0;
    $("#host-waiting-count", this.card).textContent = n === 1 ? "1 person is waiting" : `${n.toLocaleString()} people are waiting`;
  }
}
