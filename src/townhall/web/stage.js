// The stage page for the host, co-hosts and speakers: the microphone (WebRTC), live
// meters, mic checks, the hand queue and moderation.
import {
  waitForReplay,
  $, h, api, ApiError, showError, note, spaceIdFromPath, tokenFromFragment, listenLink,
  shareLink, formatCount, stateLabel, renderReactions, roomEvents, StageMic, stageSocket,
  meterPercent, confirmAction, copyableLink, linkProblem, showProblem, keepFocus, withQuery,
} from "/static/common.js";
import { GreenRoom } from "/static/greenroom.js";
import { HostWaitingControl } from "/static/waiting.js";

// How often the host's list of named listeners is refreshed while the Space is live.
const LISTENERS_REFRESH_MS = 10000;

const spaceId = spaceIdFromPath();
const token = tokenFromFragment();
let you = claims(token).sub || null;
let info = null;
let room = null; // full snapshot from the socket
let levels = new Map(); // id -> stage status (4x/s)
let publicRoom = null; // SSE: counts and speaking
let events = null;
let socket = null;
let listeners = []; // GET /listeners: the named audience, for moderators
let listenersTimer = null;

const mic = new StageMic({
  spaceId,
  token,
  mixAudio: $("#mix"),
  onState: () => renderSelf(),
  onRefused: (e) => showError(e, "Back on stage"),
});
let recording = null; // the last {state, detail} the server said about the recording
const greenRoom = new GreenRoom({
  spaceId,
  token,
  room: () => room,
  levels: () => levels,
  isHost: () => isHost(),
  mySeat: () => mySeat(),
  micOpen: () => mic.open,
  connectMic: () => connectMic(),
  onRoom: (snapshot) => applyRoom(snapshot),
  onLive: (description) => {
    info = description;
    room = { ...(room || {}), state: "live", green_room: false };
    connectEvents();
    render();
  },
});
// Before the start: how many wait, and the host's message to them (waiting.js).
const hostWaiting = new HostWaitingControl({
  post: (message) => api(`/api/spaces/${spaceId}/late_message`, { method: "POST", token, body: { message } }),
  anchor: $("#controls"),
});

function claims(t) {
  try {
    const b64 = t.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(decodeURIComponent(escape(atob(b64))));
  } catch {
    return {};
  }
}

async function command(name, target) {
  const out = await api(`/api/spaces/${spaceId}/commands`, {
    method: "POST",
    token,
    body: target ? { command: name, target } : { command: name },
  });
  applyRoom(out.room);
  return out;
}

function mySeat() {
  return (room?.stage || []).find((s) => s.id === you) || null;
}
function myRole() {
  return mySeat()?.role || (room ? "listener" : claims(token).role);
}
function isModerator() {
  return ["host", "cohost"].includes(myRole());
}
function isHost() {
  return myRole() === "host";
}
function state() {
  return room?.state || info?.state;
}

// -- rendering ---------------------------------------------------------------------------

function render() {
  const r = room || info?.room || {};
  $("#title").textContent = r.title || info?.title || "Space";
  document.title = `${r.title || info?.title || "Space"} · townhall stage`;
  $("#description").textContent = r.description ?? info?.description ?? "";
  const st = state();
  const badge = $("#state");
  badge.textContent = st === "live" ? "● Live" : stateLabel(st);
  badge.className = `badge ${st || ""}`;
  document.body.dataset.state = st || "";
  const roleName = { host: "the host", cohost: "a co-host", speaker: "a speaker", listener: "in the audience" }[myRole()] || "";
  // A name that only repeats the role ("Speaker", "Host") says nothing more.
  const given = mySeat()?.name || claims(token).name || "";
  const myName = ["speaker", "host", "co-host", "cohost"].includes(given.toLowerCase()) ? "" : given;
  $("#whoami").textContent = roleName ? `You are ${roleName}${myName ? ` (${myName})` : ""}.` : "";
  const counts = publicRoom || r;
  // An ended Space has nobody listening: its last live figures would say otherwise.
  $("#counts").hidden = st === "ended";
  const cancelled = !!info?.cancelled;
  document.body.dataset.cancelled = cancelled ? "1" : "0";
  if (cancelled) badge.textContent = "Cancelled";
  $("#ending").hidden = st !== "ended";
  $("#ending").textContent = cancelled
    ? "This Space was cancelled before it went live. There is no recording."
    : "This Space has ended.";
  $("#counts").replaceChildren(
    h("b", {}, formatCount(counts.listening_now)), " listening now · ",
    h("b", {}, formatCount(counts.total_tuned_in)), " tuned in",
  );
  renderReactions($("#reactions"), (publicRoom || r).reaction_tallies, react);
  renderStageList();
  renderHands();
  $("#invite-card").hidden = !isModerator() || st === "ended";
  $("#invite-role").querySelector('[value="cohost"]').disabled = !isHost();
  $("#replay-card").hidden = st !== "ended" || cancelled;
  $("#react-card").hidden = st === "ended";
  $("#stage-card").hidden = st === "ended"; // nobody is on the stage of an ended Space
  $("#controls").hidden = st === "ended";
  renderListeners();
  if (st === "ended" && info?.replay) {
    $("#replay-page-link").href = info.replay_link || `/s/${encodeURIComponent(spaceId)}/replay`;
    $("#replay-link").href = info.replay.ogg;
    if (!$("#replay").getAttribute("src")) $("#replay").src = info.replay.ogg;
  }
  renderSelf();
  renderRecording();
}

function renderSelf() {
  const st = state();
  const seat = mySeat();
  $("#start").hidden = !(isHost() && st === "scheduled");
  $("#end").hidden = !(isHost() && st !== "ended");
  $("#end").textContent = st === "scheduled" ? "Cancel Space" : "End Space";
  $("#connect").hidden = !(seat && st === "live" && !mic.open);
  $("#mute").hidden = !(seat && mic.open);
  $("#leave").hidden = !(seat && seat.role !== "host" && st !== "ended");
  const muted = !!seat?.muted;
  $("#mute").textContent = muted ? "🎙 Unmute" : "🔇 Mute";
  $("#mute").setAttribute("aria-pressed", String(muted));

  let micState = "off";
  let text = "Microphone off";
  let cls = "status";
  const lv = levels.get(you);
  if (st === "scheduled") text = isHost() ? "Start the Space to open the stage; your microphone connects then." : "Waiting for the host to start the Space.";
  else if (st === "ended") text = "The Space has ended.";
  else if (!seat) text = "You're not on stage.";
  else if (!mic.open) {
    text = "Your microphone is not connected.";
    cls = "status warn";
  } else if (mic.reconnecting) {
    micState = "reconnecting";
    text = "Reconnecting to the stage…";
    cls = "status warn";
  } else if (muted) {
    micState = "muted";
    text = "You're muted.";
  } else if (seat.live) {
    micState = "live";
    text = "🔴 You're live — everyone can hear you.";
    cls = "status ok";
    if (lv && (lv.dead_mic || !lv.receiving)) {
      text = "⚠ You're live but the server hears nothing from your microphone.";
      cls = "status warn";
    }
  } else {
    micState = "checking";
    text = "Mic check: waiting for the server to hear you…";
    cls = "status warn";
  }
  document.body.dataset.mic = micState;
  $("#mic-status").textContent = text;
  $("#mic-status").className = cls;
  greenRoom.render();
}

function renderStageList() {
  keepFocus($("#stage"), drawStageList);
}

function drawStageList() {
  const list = $("#stage");
  const stage = (room || info?.room || {}).stage || [];
  const speaking = new Set((publicRoom || room || {}).speaking || []);
  list.replaceChildren();
  if (!stage.length) list.append(h("li", { class: "empty" }, "Nobody on stage"));
  for (const seat of stage) {
    const self = seat.id === you;
    const actions = [];
    if (isModerator() && !self && state() !== "ended") {
      const canTouch = seat.role === "speaker" || (seat.role === "cohost" && isHost());
      if (!seat.muted && seat.role !== "host")
        actions.push(btn("Mute", `Mute ${seat.name}`, () => command("mute", seat.id), "mute"));
      if (canTouch) {
        actions.push(btn("Move to audience", `Move ${seat.name} to the audience`, () => command("move_to_audience", seat.id), "demote"));
        actions.push(btn("Remove", `Remove ${seat.name} from the Space`, () => removePerson(seat), "remove", "danger"));
      }
      if (isHost() && seat.role === "speaker")
        actions.push(btn("Make co-host", `Make ${seat.name} a co-host`, () => command("add_cohost", seat.id), "cohost"));
    }
    list.append(
      h(
        "li",
        { class: `person${speaking.has(seat.id) ? " speaking" : ""}`, dataset: { id: seat.id, live: seat.live ? "1" : "0" } },
        h("span", { class: "avatar", "aria-hidden": "true" }, (seat.name || "?").slice(0, 1).toUpperCase()),
        h(
          "span",
          { class: "who" },
          h("span", { class: "name" }, seat.name, self ? " (you)" : ""),
          h(
            "span",
            { class: "meta" },
            " ", seat.role,
            state() === "ended" ? null : seat.live ? h("span", { class: "tag live" }, "live") : h("span", { class: "tag pending" }, "mic check"),
            seat.muted ? h("span", { class: "tag muted" }, "muted") : null,
          ),
          state() === "ended" ? null : h("div", { class: "meter", role: "meter", "aria-label": `${seat.name} level`, "aria-valuemin": "0", "aria-valuemax": "100", "aria-valuenow": "0" }, h("span")),
          h("div", { class: "warning", hidden: true }),
          actions.length ? h("div", { class: "actions" }, actions) : null,
        ),
      ),
    );
  }
  renderLevels();
}

function btn(label, aria, run, action, cls = "") {
  return h(
    "button",
    {
      type: "button",
      class: `small ${cls}`,
      "aria-label": aria,
      dataset: { action },
      onclick: async (ev) => {
        const button = ev.currentTarget;
        button.disabled = true;
        try {
          await run();
        } catch (e) {
          showError(e, label);
          render();
        } finally {
          button.disabled = false; // a cancelled confirmation leaves it usable
          // The dialog gave the focus back while the button was disabled: take it again.
          // (Rows are redrawn as the room changes: then its twin in the new row.)
          const lost = document.activeElement === document.body || !document.activeElement;
          const rowId = button.closest("[data-id]")?.dataset.id;
          const twin = button.isConnected
            ? button
            : [...document.querySelectorAll(`[data-action="${action}"]`)].find((b) => b.closest("[data-id]")?.dataset.id === rowId);
          if (lost && twin) twin.focus();
        }
      },
    },
    label,
  );
}

/** The host's banner while the recording is paused (a disk error); the air is not. */
function renderRecording() {
  const banner = $("#recording-banner");
  const paused = recording?.state === "paused" && state() !== "ended";
  banner.hidden = !paused;
  banner.textContent = paused
    ? `Recording paused${recording.detail ? `: ${recording.detail}` : ""}. The live audio continues.`
    : "";
  document.body.dataset.recording = recording?.state || "";
}

/** Meters and dead-mic warnings, updated in place 4x/s (no re-render of the buttons). */
function renderLevels() {
  if (state() !== "live") return;
  for (const li of $("#stage").querySelectorAll("li[data-id]")) {
    const status = levels.get(li.dataset.id);
    const pct = status && !status.dead_mic ? meterPercent(status.level_dbfs) : 0;
    const meter = li.querySelector(".meter");
    if (!meter) continue;
    meter.firstElementChild.style.width = `${pct}%`;
    meter.setAttribute("aria-valuenow", String(Math.round(pct)));
    const warn = li.querySelector(".warning");
    let text = "";
    if (!status || !status.connected) text = "⚠ Microphone not connected";
    else if (!status.receiving) text = "⚠ No audio arriving from this microphone";
    else if (status.dead_mic) text = `⚠ Dead mic? Silent for ${Math.round(status.silent_s ?? 0)} s`;
    warn.textContent = text;
    warn.hidden = !text;
    li.dataset.deadMic = text ? "1" : "0";
  }
}

function renderHands() {
  keepFocus($("#hands"), drawHands);
}

function drawHands() {
  const card = $("#hands-card");
  card.hidden = !isModerator() || state() !== "live";
  if (card.hidden) return;
  const list = $("#hands");
  const invited = new Set(room?.pending_invitations || []);
  const queue = room?.hand_queue || [];
  list.replaceChildren();
  if (!queue.length) list.append(h("li", { class: "empty" }, "No raised hands"));
  for (const p of queue) {
    const isInvited = invited.has(p.id);
    list.append(
      h(
        "li",
        { class: "person", dataset: { id: p.id, invited: isInvited ? "1" : "0" } },
        h("span", { class: "avatar", "aria-hidden": "true" }, "✋"),
        h(
          "span",
          { class: "who" },
          h("span", { class: "name" }, p.name),
          h("span", { class: "meta" }, isInvited ? h("span", { class: "tag pending" }, "invited — waiting for them") : " wants to speak"),
        ),
        h(
          "span",
          { class: "actions" },
          isInvited
            ? btn("Withdraw", `Withdraw the invitation to ${p.name}`, () => command("withdraw_invitation", p.id), "withdraw")
            : [
                btn("Approve", `Invite ${p.name} to speak`, () => command("invite", p.id), "approve", "primary"),
                // The listener is told: their page sees the hand lowered by someone else.
                btn("Dismiss", `Dismiss ${p.name}'s hand`, () => command("dismiss_hand", p.id), "dismiss"),
              ],
        ),
      ),
    );
  }
}

/** Ask, then remove someone for good (they cannot come back with the same link). */
async function removePerson(person) {
  const ok = await confirmAction(
    `Remove ${person.name}?`,
    "Remove and block",
    `${person.name} leaves the Space and cannot come back into it.`,
  );
  if (!ok) return;
  await command("remove", person.id);
  listeners = listeners.filter((l) => l.id !== person.id);
  renderListeners();
}

/** The named listeners (a hand, a reaction), for the host and co-hosts, with Remove. */
function renderListeners() {
  keepFocus($("#listeners"), drawListeners);
}

function drawListeners() {
  const card = $("#listeners-card");
  card.hidden = !isModerator() || state() !== "live";
  if (card.hidden) return;
  const list = $("#listeners");
  const counts = publicRoom || room || {};
  $("#listeners-note").textContent =
    `${formatCount(counts.listening_now)} listening now. Listeners appear here by name once they raise a hand or react.`;
  const rows = listeners.map((p) =>
    h(
      "li",
      { class: "person", dataset: { id: p.id } },
      h("span", { class: "avatar", "aria-hidden": "true" }, (p.name || "?").slice(0, 1).toUpperCase()),
      h("span", { class: "who" }, h("span", { class: "name" }, p.name), p.hand_raised ? h("span", { class: "meta" }, " hand raised") : null),
      h("span", { class: "actions" }, btn("Remove", `Remove ${p.name} from the Space`, () => removePerson(p), "remove-listener", "danger")),
    ),
  );
  list.replaceChildren(...(rows.length ? rows : [h("li", { class: "empty" }, "No named listeners yet")]));
}

async function refreshListeners() {
  if (!isModerator() || state() !== "live") return;
  try {
    listeners = (await api(`/api/spaces/${spaceId}/listeners`, { token })).listeners;
    renderListeners();
  } catch (e) {
    if (!(e instanceof ApiError && e.status === 429)) showError(e, "Listeners");
  }
}

function listenersLoop() {
  if (listenersTimer) return;
  refreshListeners();
  listenersTimer = setInterval(refreshListeners, LISTENERS_REFRESH_MS);
}

// -- room updates ---------------------------------------------------------------------------

function applyRoom(snapshot) {
  if (!snapshot) return;
  const before = state();
  room = snapshot;
  if (before !== "ended" && snapshot.state === "ended") onEnded();
  if (snapshot.state === "live") {
    connectEvents();
    if (isModerator()) listenersLoop();
  }
  if (snapshot.state === "scheduled" && isModerator()) {
    connectEvents(); // the waiting count comes with the audience's snapshots
    hostWaiting.update({ ...snapshot, waiting_now: publicRoom?.waiting_now ?? 0 });
  } else hostWaiting.update(snapshot);
  if (mic.open && !mySeat()) {
    mic.close(); // moved to the audience or removed: the server already cut the audio
  }
  render();
}

function onMessage(msg) {
  if (msg.type === "hello") {
    you = msg.you;
    applyRoom(msg.room);
  } else if (msg.type === "room") {
    applyRoom(msg.room);
  } else if (msg.type === "levels") {
    levels = new Map(msg.members.map((m) => [m.id, m]));
    renderLevels();
    renderSelf();
  } else if (msg.type === "stage") {
    // The stage process was lost and restarts: a new connection at once, not after
    // the watchdog's two seconds of silence.
    if (msg.state === "restarting" && mic.open) mic.onStageRestarting();
    renderSelf();
  } else if (msg.type === "recording") {
    recording = { state: msg.state, detail: msg.detail || "" };
    renderRecording();
  } else if (msg.type === "event") {
    if (msg.participant_id === you && msg.event === "ParticipantRemoved") showError(new Error("You were removed from this Space."));
    if (msg.participant_id === you && msg.event === "SpeakerMovedToAudience" && msg.by !== you)
      showError(new Error("The host moved you to the audience."));
  }
}

function connectEvents() {
  if (events || !info) return;
  // count=0: the stage's people follow the room's events, but are not among those waiting.
  events = roomEvents(withQuery(info.audience.events, "count", "0"), (snap) => {
    publicRoom = snap;
    if (isModerator()) hostWaiting.update({ ...(room || {}), ...snap, state: room?.state || snap.state });
    if (room) {
      room = { ...room, speaking: snap.speaking, listening_now: snap.listening_now, total_tuned_in: snap.total_tuned_in, reaction_tallies: snap.reaction_tallies };
    }
    if (snap.state === "ended" && state() !== "ended") {
      room = { ...(room || {}), state: "ended" };
      onEnded();
    }
    render();
  });
}

let endedHandled = false;
async function onEnded() {
  if (endedHandled) return;
  endedHandled = true;
  clearInterval(listenersTimer);
  if (mic.open) mic.close();
  if (events) {
    events.close();
  }
  info = await waitForReplay(spaceId, info);
  render();
}

// -- actions ----------------------------------------------------------------------------------

async function connectMic() {
  $("#connect").disabled = true;
  try {
    await mic.connect();
    mic.setMuted(!!mySeat()?.muted);
  } catch (e) {
    showError(e, "Microphone");
  } finally {
    $("#connect").disabled = false;
    renderSelf();
  }
}

async function start() {
  $("#start").disabled = true;
  try {
    info = await api(`/api/spaces/${spaceId}/start`, { method: "POST", token });
    room = { ...(room || {}), state: "live" };
    connectEvents();
    render();
    await connectMic();
  } catch (e) {
    showError(e, "Start");
  } finally {
    $("#start").disabled = false;
  }
}

async function end() {
  const scheduled = state() === "scheduled";
  const ok = await confirmAction(
    scheduled ? "Cancel this Space?" : "End this Space for everyone?",
    scheduled ? "Cancel Space" : "End Space",
    scheduled
      ? "Listeners are told it was cancelled. It cannot be started again."
      : "Everyone stops hearing it now; the replay is published.",
  );
  if (!ok) return;
  $("#end").disabled = true;
  try {
    info = await api(`/api/spaces/${spaceId}/end`, { method: "POST", token });
    room = { ...(room || {}), state: "ended" };
    onEnded();
  } catch (e) {
    showError(e, "End");
  } finally {
    $("#end").disabled = false;
    render();
  }
}

async function toggleMute() {
  await mic.toggleSelfMute(mySeat, (name) => command(name, you));
}

async function leave() {
  try {
    await command("move_to_audience", you);
    if (mic.open) mic.close();
    $("#share-status").replaceChildren("You left the stage. ", h("a", { href: listenLink(spaceId) }, "Keep listening"));
  } catch (e) {
    showError(e, "Leave stage");
  }
}

async function react(emoji) {
  try {
    const out = await api(`/api/spaces/${spaceId}/reactions`, { method: "POST", token, body: { emoji } });
    publicRoom = { ...(publicRoom || room || {}), reaction_tallies: out.reaction_tallies };
    renderReactions($("#reactions"), out.reaction_tallies, react);
  } catch (e) {
    showError(e, "Reaction");
  }
}

async function createInvite(ev) {
  ev.preventDefault();
  try {
    const out = await api(`/api/spaces/${spaceId}/invite`, {
      method: "POST",
      token,
      body: { role: $("#invite-role").value, name: $("#invite-name").value.trim() || "Speaker" },
    });
    $("#invite-link").replaceChildren(copyableLink(out.link, "invitation link", "invite-url"));
    $("#invite-out").hidden = false;
    $("#invite-status").textContent = "Send this link to your guest; it puts them on stage.";
  } catch (e) {
    showError(e, "Invite link");
  }
}

// -- start-up ---------------------------------------------------------------------------------

async function load() {
  if (!token) {
    return showProblem({
      title: "This link is incomplete",
      message: "A stage link ends in #t=… followed by its key. Open the full link you were given.",
    });
  }
  try {
    info = await api(`/api/spaces/${encodeURIComponent(spaceId)}`);
  } catch (e) {
    if (e instanceof ApiError && e.status === 404) return showProblem(linkProblem(e));
    showError(e, "Loading the Space");
    return;
  }
  // The link's token first: an expired link, or one for another Space, gets a clear
  // page, never controls that fail one by one. Reading the room joins nobody.
  try {
    await api(`/api/spaces/${encodeURIComponent(spaceId)}/room`, { token });
  } catch (e) {
    if (e instanceof ApiError && [401, 403].includes(e.status)) {
      note("link-refused", { status: e.status });
      const listen = h("p", {}, h("a", { href: listenLink(spaceId) }, "Listen to this Space instead"));
      return showProblem(linkProblem(e), listen);
    }
    showError(e, "Checking your link");
  }
  render();
  if (info.state === "ended") {
    room = { ...(info.room || {}), state: "ended" };
    return onEnded();
  }
  socket = stageSocket(spaceId, token, {
    onMessage,
    onStatus: (status, why) => {
      document.body.dataset.socket = status;
      if (status === "refused") showError(new Error(why || "the server refused this link"), "Stage connection");
    },
  });
}

$("#start").addEventListener("click", start);
$("#end").addEventListener("click", end);
$("#connect").addEventListener("click", connectMic);
$("#mute").addEventListener("click", toggleMute);
$("#leave").addEventListener("click", leave);
$("#invite-form").addEventListener("submit", createInvite);
$("#share").addEventListener("click", () => shareLink(listenLink(spaceId), $("#title").textContent, $("#share-status")));
window.addEventListener("pagehide", () => mic.open && mic.close());
// Another link pasted into this tab changes only the fragment: the key is new, start over.
window.addEventListener("hashchange", () => location.reload());
window.townhall = {
  mic,
  get room() { return room; },
  get levels() { return levels; },
  get you() { return you; },
  get recording() { return recording; },
  // Test hook: hand the page a socket message as if the server had sent it.
  receive: (msg) => onMessage(msg),
};
note("page-loaded");
load();
