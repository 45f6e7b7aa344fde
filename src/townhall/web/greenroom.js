// The green room on the stage page. Before the start the host opens the stage: everyone
// on it connects their microphone, passes the server's mic check and hears the others
// (mix-minus), while the audience hears nothing. "Go live" puts the program on the air;
// if someone on stage would be silent the server refuses (409 dead_microphones) and the
// host is asked to confirm before the audience hears silence.
import { $, h, ApiError, api, showError, note } from "/static/common.js";

const REASONS = {
  "not connected to the stage": "not connected",
  "no sound received yet": "no sound yet",
};

export class GreenRoom {
  /**
   * @param {object} page what the stage page lends: spaceId, token; room() (the full
   *   snapshot or null), levels() (id -> stage status), isHost(), mySeat(), micOpen(),
   *   connectMic(), onRoom(snapshot), onLive(spaceDescription)
   */
  constructor(page) {
    this.page = page;
    this.dead = null; // the seats Go live was refused for, until confirmed or cleared
    this.busy = false;
    this.focusConfirm = false;
    this.card = $("#green-room");
  }

  /** The stage is open before the start (the room says so). */
  get open() {
    const r = this.page.room();
    return !!r && r.state === "scheduled" && !!r.green_room;
  }

  async openRoom() {
    await this._act(async () => {
      const room = await api(`/api/spaces/${this.page.spaceId}/green-room`, { method: "POST", token: this.page.token });
      note("green-room-opened");
      this.page.onRoom(room);
      if (!this.page.micOpen()) await this.page.connectMic();
    }, "Green room");
  }

  async goLive(force = false) {
    await this._act(async () => {
      const resp = await fetch(`/api/spaces/${this.page.spaceId}/start`, {
        method: "POST",
        headers: { Authorization: `Bearer ${this.page.token}`, "Content-Type": "application/json" },
        body: JSON.stringify({ force }),
      });
      const data = await resp.json().catch(() => null);
      if (resp.status === 409 && data?.error === "dead_microphones") {
        this.dead = data.dead_mics || [];
        note("go-live-refused", { dead: this.dead.map((d) => d.id) });
        this.focusConfirm = true; // once the buttons are enabled again
        return;
      }
      if (!resp.ok) throw new ApiError(resp.status, data?.error || "http_error", data?.detail || `Go live failed with HTTP ${resp.status}`);
      this.dead = null;
      note("went-live", { force });
      this.page.onLive(data);
    }, "Go live");
  }

  async _act(run, context) {
    if (this.busy) return;
    this.busy = true;
    this.render();
    try {
      await run();
    } catch (e) {
      showError(e, context);
    } finally {
      this.busy = false;
      this.render();
    }
  }

  /** Called by the stage page whenever it renders (room changes and meters, 4x/s). */
  render() {
    const r = this.page.room();
    const host = this.page.isHost();
    const scheduled = r?.state === "scheduled";
    // The host starts through the green room (Open green room, then Go live), so that
    // nobody goes live with a dead microphone without being told first.
    const start = $("#start");
    if (start && scheduled && host) start.hidden = true;
    document.body.dataset.greenRoom = this.open ? "open" : "";
    if (!this.card) return;
    this.card.hidden = !(scheduled && (host || this.open));
    if (this.card.hidden) return;
    if (!this.card.dataset.built) this._build();
    $("#green-room-open").hidden = !(host && !this.open);
    $("#green-room-live").hidden = !(host && this.open);
    for (const b of [$("#green-room-open"), $("#green-room-live"), $("#green-room-force")]) b.disabled = this.busy;
    $("#green-room-intro").textContent = this.open
      ? host
        ? "The stage is open; the audience hears nothing yet. Check every microphone, then go live."
        : "You're in the green room: the others on stage hear you, the audience doesn't yet."
      : "Open the green room to check microphones with your speakers before the audience hears anything.";
    this._renderChecks(r);
    this._renderConfirm();
    this._renderMine();
    if (this.focusConfirm && !this.busy && !$("#green-room-confirm").hidden) {
      this.focusConfirm = false;
      $("#green-room-force").focus();
    }
  }

  _build() {
    this.card.dataset.built = "1";
    this.card.replaceChildren(
      h("h2", { id: "green-room-h" }, "Green room"),
      h("p", { id: "green-room-intro", class: "status" }),
      h("ul", { id: "green-room-checks", class: "people", "aria-live": "polite" }),
      h(
        "div",
        { id: "green-room-confirm", class: "banner warn", role: "alertdialog", "aria-labelledby": "green-room-confirm-text", hidden: true },
        h("p", { id: "green-room-confirm-text" }),
        h(
          "div",
          { class: "row" },
          h("button", { id: "green-room-force", type: "button", class: "danger", onclick: () => this.goLive(true) }, "Go live anyway"),
          h("button", { id: "green-room-wait", type: "button", onclick: () => { this.dead = null; this.render(); $("#green-room-live")?.focus(); } }, "Keep checking"),
        ),
      ),
      h(
        "div",
        { class: "row" },
        h("button", { id: "green-room-open", type: "button", class: "primary big", onclick: () => this.openRoom() }, "🎧 Open green room"),
        h("button", { id: "green-room-live", type: "button", class: "primary big", onclick: () => this.goLive(false) }, "🔴 Go live"),
      ),
    );
  }

  _renderChecks(r) {
    const list = $("#green-room-checks");
    list.hidden = !this.open;
    if (list.hidden) return;
    const levels = this.page.levels();
    list.replaceChildren();
    for (const seat of r?.stage || []) {
      const status = levels.get(seat.id);
      let text = "✓ Mic check passed";
      let cls = "tag live";
      if (seat.muted) [text, cls] = ["Muted", "tag muted"];
      else if (!status || !status.connected) [text, cls] = ["Not connected", "tag pending"];
      else if (!seat.live || !status.mic_checked) [text, cls] = ["Waiting for sound…", "tag pending"];
      else if (status.dead_mic) [text, cls] = [`Silent for ${Math.round(status.silent_s ?? 0)} s`, "tag pending"];
      list.append(
        h(
          "li",
          { class: "person", dataset: { id: seat.id, check: cls === "tag live" ? "passed" : "pending" } },
          h("span", { class: "who" }, h("span", { class: "name" }, seat.name), " ", h("span", { class: cls }, text)),
        ),
      );
    }
  }

  _renderConfirm() {
    const box = $("#green-room-confirm");
    box.hidden = !(this.open && this.dead && this.dead.length);
    if (box.hidden) return;
    const who = this.dead.map((d) => `${d.name || d.id} (${REASONS[d.reason] || d.reason})`).join(", ");
    $("#green-room-confirm-text").textContent = `The audience won't hear: ${who}. Go live anyway?`;
  }

  /** The person's own mic line while in the green room (the page says "scheduled"). */
  _renderMine() {
    if (!this.open) {
      if (this.page.isHost() && this.page.room()?.state === "scheduled")
        $("#mic-status").textContent = "Open the green room to connect your microphone; nobody in the audience hears it until you go live.";
      return;
    }
    const seat = this.page.mySeat();
    if (!seat) return;
    const connect = $("#connect");
    if (connect) connect.hidden = this.page.micOpen();
    const status = this.page.levels().get(seat.id);
    let text = "Connect your microphone for a mic check.";
    let mic = "off";
    let cls = "status warn";
    if (this.page.micOpen()) {
      if (seat.muted) [text, mic, cls] = ["You're muted.", "muted", "status"];
      else if (seat.live && status?.mic_checked && !status.dead_mic)
        [text, mic, cls] = ["✓ Mic check passed — the others on stage hear you; the audience doesn't yet.", "checked", "status ok"];
      else [text, mic] = ["Mic check: waiting for the server to hear you…", "checking"];
    }
    document.body.dataset.mic = mic;
    $("#mic-status").textContent = text;
    $("#mic-status").className = cls;
  }
}
