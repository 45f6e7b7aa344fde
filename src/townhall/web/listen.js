// The listener page: play the live program, react, raise a hand, and when invited,
// come up on stage (audience stream stopped first, then the microphone).
import {
  waitForReplay,
  $, h, api, ApiError, showError, clearErrors, note, sleep, backoffDelay, spaceIdFromPath, listenLink,
  shareLink, formatCount, stateLabel, renderReactions, roomEvents, AudiencePlayer, StageMic,
  stageSocket, behindLive, linkProblem, showProblem,
} from "/static/common.js";
import { WaitingRoom } from "/static/waiting.js";

const spaceId = spaceIdFromPath();
const storeKey = `townhall:listener:${spaceId}`;
const DEFAULT_NAME = "Listener";

// Personal state is asked of the control API (GET /room with this page's token) only
// while a hand is raised or an invitation is pending, at most this often.
const PERSONAL_POLL_MS = 3000;
const STAGE_ROLES = ["host", "cohost", "speaker"];

let info = null; // GET /api/spaces/{id}
let room = null; // public snapshot (SSE; the socket's while on stage)
let session = loadSession();
let events = null;
let socket = null; // the stage WebSocket: only while this listener is on stage
let heartbeatTimer = null;
let handRaised = false;
let invited = false;
let ownChange = false; // this page lowered the hand or declined: not the host's doing
let polling = false;
let pendingAfterName = null;

const player = new AudiencePlayer($("#player"), {
  hlsUrl: "",
  oggUrl: "",
  onStatus: (state, text) => {
    $("#player-status").textContent = text;
    $("#play").textContent = player.playing ? "■ Stop" : "▶ Play";
    $("#play").setAttribute("aria-label", player.playing ? "Stop listening" : "Play the live audio");
    waiting.playerStatus(state);
  },
});
// Before the start: the countdown, the host's message (and an Ogg stream held open); at
// the start it plays by itself (see waiting.js).
const waiting = new WaitingRoom({
  onAir: () => player.released(),
  onLive: () => (player.playing ? heartbeatLoop(true) : togglePlay()),
  onTap: () => player.audio.play().catch((e) => showError(e, "Play")),
});
const mic = new StageMic({
  spaceId,
  token: session?.token,
  mixAudio: $("#mix"),
  onState: () => renderStage(),
  onRefused: (e) => showError(e, "Back on stage"),
});

// -- session (a listener token, shared by reloads and tabs: honest counts) -------------

function loadSession() {
  try {
    return JSON.parse(localStorage.getItem(storeKey) || "null");
  } catch {
    return null;
  }
}

function saveSession(s) {
  session = s;
  mic.token = s?.token;
  player.sessionId = s?.session_id || "";
  if (s) localStorage.setItem(storeKey, JSON.stringify(s));
  else localStorage.removeItem(storeKey);
}

async function ensureSession(name) {
  if (session && (!name || session.name === name)) return session;
  if (session && name) {
    // Keep the same session (one person, one count): rename it if it has not joined yet.
    try {
      const out = await api(`/api/spaces/${spaceId}/listeners/name`, { method: "POST", token: session.token, body: { name } });
      saveSession({ ...session, token: out.token, session_id: out.session_id, name });
      return session;
    } catch (e) {
      if (!(e instanceof ApiError && (e.status === 409 || e.status === 401))) throw e;
    }
  }
  const wanted = name || DEFAULT_NAME;
  const out = await api(`/api/spaces/${spaceId}/listeners`, { method: "POST", body: { name: wanted } });
  saveSession({ token: out.token, session_id: out.session_id, name: wanted, engaged: false });
  if (socket) {
    socket.close();
    socket = null;
  }
  return session;
}

async function command(name, target) {
  const out = await api(`/api/spaces/${spaceId}/commands`, {
    method: "POST",
    token: session.token,
    body: target ? { command: name, target } : { command: name },
  });
  applyFull(out.room);
  return out;
}

function engage() {
  // A listener with a hand up or an invitation asks for their own state now and then;
  // the public state comes from the SSE like everyone's.
  if (!session.engaged) saveSession({ ...session, engaged: true });
  pollPersonal();
}

/** This listener's own state, from a room answer (`you`, or the moderators' lists). */
function personalFrom(snapshot) {
  if (snapshot.you) return snapshot.you;
  const seat = (snapshot.stage || []).find((s) => s.id === me());
  return {
    role: seat ? seat.role : "listener",
    hand_raised: (snapshot.hand_queue || []).some((p) => (p.id || p) === me()),
    invited: (snapshot.pending_invitations || []).includes(me()),
  };
}

function applyPersonal(snapshot) {
  if (!snapshot || !session) return;
  const mine = personalFrom(snapshot);
  const wasRaised = handRaised;
  const wasInvited = invited;
  handRaised = !!mine.hand_raised;
  invited = !!mine.invited;
  const onStage = STAGE_ROLES.includes(mine.role);
  if (!ownChange && !onStage) {
    if (wasInvited && !invited) tell("The host withdrew the invitation to speak.");
    else if (wasRaised && !handRaised && !invited) tell("The host lowered your hand. You can raise it again later.");
  }
  ownChange = false;
  for (const k of ["state", "title", "description", "stage"]) if (k in snapshot) room = { ...(room || {}), [k]: snapshot[k] };
  if (snapshot.state === "ended") onEnded();
  render();
  if (invited && !wasInvited && !mySeat()) {
    // Announced (role=alert) and focused, so a screen reader or keyboard user is there.
    $("#invite-banner").focus();
    note("invited");
  }
  if (onStage) stageSocketOn();
}

/** Say something about this listener's hand, where they look and out loud. */
function tell(text) {
  $("#hand-status").textContent = text;
  document.body.dataset.told = text;
  note("told", { text });
}

async function pollPersonal() {
  if (polling || !session) return;
  polling = true;
  try {
    do {
      await sleep(PERSONAL_POLL_MS);
      if (!session || endedHandled) break;
      try {
        applyPersonal(await api(`/api/spaces/${spaceId}/room`, { token: session.token }));
      } catch (e) {
        if (e instanceof ApiError && e.status === 403 && /removed/.test(e.detail)) {
          handRaised = invited = false;
          showError(new Error("The host removed you from this Space."));
          leftStage("You were removed from this Space.", false);
        } else if (!(e instanceof ApiError && e.status === 429)) showError(e, "Checking your hand");
      }
    } while ((handRaised || invited) && !mySeat());
  } finally {
    polling = false;
  }
}

function stageSocketOn() {
  if (socket || !session) return;
  socket = stageSocket(spaceId, session.token, {
    onMessage: (msg) => {
      if (msg.room) applyFull(msg.room);
      // The stage process was lost and restarts: reconnect the microphone at once.
      if (msg.type === "stage" && msg.state === "restarting" && mic.open) mic.onStageRestarting();
      if (msg.type !== "event" || msg.participant_id !== session?.session_id) return;
      // Leaving the stage is taken from these events, never inferred from a snapshot
      // (an SSE snapshot can lag behind an accept and would restart the stream).
      if (msg.event === "ParticipantRemoved") {
        showError(new Error("The host removed you from this Space."));
        leftStage("You were removed from this Space.", false);
      } else if (msg.event === "SpeakerMovedToAudience" && msg.by !== session?.session_id) {
        leftStage("The host moved you back to the audience.");
        render();
      }
    },
    onStatus: (status, why) => {
      if (status === "refused") {
        showError(new Error(why || "the server refused the connection"), "Live updates");
        socket = null;
      }
    },
  });
}

function heartbeatLoop(on) {
  clearInterval(heartbeatTimer);
  heartbeatTimer = null;
  if (!on || !session) return;
  const beat = async () => {
    try {
      const counts = await api(`/api/spaces/${spaceId}/heartbeat`, { method: "POST", token: session.token });
      renderCounts(counts);
    } catch (e) {
      if (e instanceof ApiError && e.status === 401) saveSession(null); // expired: sign in again next time
      else if (!(e instanceof ApiError && e.status === 429)) showError(e, "Heartbeat");
    }
  };
  beat();
  heartbeatTimer = setInterval(beat, 10000);
}

// -- rendering -------------------------------------------------------------------------

function me() {
  return session?.session_id;
}

function mySeat() {
  const stage = room?.stage || [];
  return stage.find((s) => s.id === me()) || null;
}

function currentState() {
  return room?.state || info?.state;
}

function cancelled() {
  return !!info?.cancelled;
}

function renderCounts(c) {
  if (!c) return;
  // An ended Space has nobody listening: its last live figures would say otherwise.
  $("#counts").hidden = currentState() === "ended";
  if (currentState() === "ended") return;
  $("#counts").innerHTML = "";
  $("#counts").append(
    h("b", {}, formatCount(c.listening_now)), " listening now · ",
    h("b", {}, formatCount(c.total_tuned_in)), " tuned in",
  );
}

function render() {
  const r = room || info?.room || {};
  const state = r.state || info?.state;
  document.title = `${r.title || info?.title || "Space"} · townhall`;
  $("#title").textContent = r.title || info?.title || "Space";
  $("#description").textContent = r.description ?? info?.description ?? "";
  const badge = $("#state");
  badge.textContent = state === "live" ? "● Live" : cancelled() ? "Cancelled" : stateLabel(state);
  badge.className = `badge ${state || ""}`;
  document.body.dataset.state = state || "";
  document.body.dataset.cancelled = cancelled() ? "1" : "0";
  $("#host").textContent = info?.host_name ? `Hosted by ${info.host_name}` : "";
  // Every Space is recorded: listeners are told while it is on the air.
  $("#rec").hidden = state !== "live";
  const ending = $("#ending");
  ending.hidden = state !== "ended";
  ending.textContent = cancelled()
    ? "This Space was cancelled by the host. It never went live, so there is no recording."
    : state === "ended"
      ? "This Space has ended."
      : "";
  $("#calendar").hidden = !(state === "scheduled" && info?.scheduled_at && info?.calendar_link);
  if (info?.calendar_link) $("#calendar-link").href = info.calendar_link;
  // Everyone on stage is gone or silent: say so rather than play silence as if live.
  if (state === "live" && r.reconnecting) badge.textContent = "● Live · the host is reconnecting…";
  document.body.dataset.reconnecting = state === "live" && r.reconnecting ? "1" : "0";
  renderCounts(r);
  renderReactions($("#reactions"), r.reaction_tallies, react);

  const speaking = new Set(r.speaking || []);
  const list = $("#stage");
  list.replaceChildren();
  const stage = r.stage || [];
  if (!stage.length)
    list.append(
      h("li", { class: "empty" }, state === "live" ? "Nobody on stage yet" : state === "ended" ? "The stage is closed" : "The stage opens when the Space starts"),
    );
  for (const seat of stage) {
    const isSpeaking = speaking.has(seat.id);
    list.append(
      h(
        "li",
        { class: `person${isSpeaking ? " speaking" : ""}`, dataset: { id: seat.id, speaking: isSpeaking ? "1" : "0" } },
        h("span", { class: "avatar", "aria-hidden": "true" }, (seat.name || "?").slice(0, 1).toUpperCase()),
        h(
          "span",
          { class: "who" },
          h("span", { class: "name" }, seat.name, seat.id === me() ? " (you)" : ""),
          h(
            "span",
            { class: "meta" },
            " ", seat.role,
            seat.muted ? h("span", { class: "tag muted" }, "muted") : null,
            seat.connected === false && state === "live" ? h("span", { class: "tag pending" }, "disconnected") : null,
            seat.connected !== false && !seat.live ? h("span", { class: "tag pending" }, "mic check") : null,
            isSpeaking ? h("span", { class: "tag live" }, "speaking") : null,
          ),
        ),
      ),
    );
  }

  const ended = state === "ended";
  $("#play").disabled = ended || !!mySeat() || mic.open;
  $("#hand-card").hidden = ended || !!mySeat();
  $("#player-card").hidden = ended;
  $("#replay-card").hidden = !ended || cancelled();
  $("#react-card").hidden = ended;
  $("#stage-card").hidden = ended; // nobody is on the stage of an ended Space
  if (ended && info?.replay) {
    $("#replay-page-link").href = info.replay_link || `/s/${encodeURIComponent(spaceId)}/replay`;
    $("#replay-link").href = info.replay.ogg;
    if (!$("#replay").getAttribute("src")) $("#replay").src = info.replay.ogg;
  }
  renderHand();
  renderStage();
}

function renderHand() {
  const btn = $("#hand");
  btn.textContent = handRaised ? "✋ Lower hand" : "✋ Raise hand";
  btn.setAttribute("aria-pressed", String(handRaised));
  btn.disabled = (room?.state || info?.state) !== "live";
  if (invited) $("#hand-status").textContent = "The host invited you.";
  else if (handRaised) $("#hand-status").textContent = "Your hand is raised; the host can invite you up.";
  else if (!document.body.dataset.told) $("#hand-status").textContent = "";
  $("#invite-banner").hidden = !invited || !!mySeat();
  document.body.dataset.invited = invited ? "1" : "0";
}

function renderStage() {
  const seat = mySeat();
  const card = $("#onstage");
  card.hidden = (!seat && !mic.open) || (room?.state || info?.state) === "ended";
  let micState = "off";
  let text = "Microphone off";
  let cls = "status";
  if (seat && mic.open) {
    if (mic.reconnecting) {
      micState = "reconnecting";
      text = "Reconnecting to the stage…";
      cls = "status warn";
    } else if (seat.muted) {
      micState = "muted";
      text = "You're muted.";
    } else if (seat.live) {
      micState = "live";
      text = "🔴 You're live — everyone can hear you.";
      cls = "status ok";
    } else {
      micState = "checking";
      text = "Mic check: waiting for the server to hear you…";
      cls = "status warn";
    }
  } else if (mic.open) {
    micState = "opening";
    text = "Connecting your microphone…";
  } else if (seat) {
    text = "You're on stage but your microphone is not connected.";
    cls = "status warn";
  }
  document.body.dataset.mic = micState;
  const status = $("#mic-status");
  status.textContent = text;
  status.className = cls;
  const muted = !!seat?.muted;
  $("#mute").textContent = muted ? "🎙 Unmute" : "🔇 Mute";
  $("#mute").setAttribute("aria-pressed", String(muted));
  $("#mute").disabled = !seat;
  // Someone on stage whose microphone dropped can reconnect it.
  let reconnect = $("#reconnect-mic");
  if (seat && !mic.open && (room?.state || info?.state) === "live") {
    if (!reconnect) {
      reconnect = h("button", { id: "reconnect-mic", class: "primary", type: "button", onclick: openMic }, "🎙 Connect microphone");
      $("#leave-stage").before(reconnect);
    }
  } else if (reconnect) reconnect.remove();
}

function applyFull(snapshot) {
  if (!snapshot) return;
  room = { ...(room || {}), ...pickPublic(snapshot) };
  if (session) {
    const mine = personalFrom(snapshot);
    handRaised = !!mine.hand_raised;
    invited = !!mine.invited;
  }
  if (snapshot.state === "ended") onEnded();
  render();
}

function pickPublic(s) {
  const out = {};
  for (const k of ["state", "title", "description", "stage", "speaking", "listening_now", "total_tuned_in", "reaction_tallies"]) {
    if (k in s) out[k] = s[k];
  }
  return out;
}

function applyPublic(snapshot) {
  room = { ...(room || {}), ...snapshot };
  waiting.update(snapshot);
  if (snapshot.state === "ended") onEnded();
  render();
}

// -- actions ---------------------------------------------------------------------------

async function togglePlay() {
  if (player.playing) {
    player.stop("Not playing");
    heartbeatLoop(false);
    return;
  }
  try {
    await ensureSession();
  } catch (e) {
    showError(e, "Sign-in");
  }
  heartbeatLoop(true);
  player.sessionId = session?.session_id || "";
  await player.play();
}

async function react(emoji) {
  try {
    await ensureSession();
    const out = await api(`/api/spaces/${spaceId}/reactions`, { method: "POST", token: session.token, body: { emoji } });
    room = { ...(room || {}), reaction_tallies: out.reaction_tallies };
    renderReactions($("#reactions"), out.reaction_tallies, react);
  } catch (e) {
    showError(e, "Reaction");
  }
}

function askName(then) {
  const form = $("#name-form");
  form.hidden = false;
  $("#name").value = session?.name && session.name !== DEFAULT_NAME ? session.name : "";
  $("#name").focus();
  pendingAfterName = then;
}

async function toggleHand() {
  try {
    if (handRaised) {
      ownChange = true;
      await command("lower_hand");
      handRaised = false;
      render();
      return;
    }
    if (!session || session.name === DEFAULT_NAME) {
      askName(raiseHand);
      return;
    }
    await raiseHand();
  } catch (e) {
    showError(e, "Hand");
  }
}

async function raiseHand() {
  await ensureSession();
  delete document.body.dataset.told;
  await command("raise_hand");
  handRaised = true;
  engage();
  render();
}

/** Open the microphone; returns the error if it could not be opened, else null. */
async function openMic() {
  // Never let the audience stream play into a live microphone: stop it first.
  player.stop("Stopped while you're on stage");
  let failed = null;
  try {
    await mic.connect();
  } catch (e) {
    failed = e;
  }
  renderStage();
  return failed;
}

/**
 * The microphone failed after accepting: a seat nobody can hear is no use to the host
 * and leaves this listener hearing nothing. Step down, say why, and play again.
 */
async function micFailed(err) {
  const why = err instanceof ApiError ? err.detail : err?.message || String(err);
  try {
    await command("move_to_audience", me());
  } catch (e) {
    console.warn("stepping down after a failed microphone", e);
  }
  const text = `${why}. You're back in the audience and listening again. To speak, allow the microphone in your browser, then raise your hand again.`;
  showError(new Error(text));
  leftStage(text);
  document.body.dataset.micFailed = "1";
  render();
  $("#play").focus();
}

async function accept() {
  $("#accept").disabled = true;
  // 1. the audience stream off (paused, source removed, hls.js destroyed) ...
  const resumeAfter = player.playing;
  player.stop("Stopped while you join the stage");
  try {
    await command("accept_invitation");
  } catch (e) {
    showError(e, "Accept");
    $("#accept").disabled = false;
    if (resumeAfter) player.play();
    return;
  }
  // 2. ... only then the microphone.
  stageSocketOn();
  const failed = await openMic();
  $("#accept").disabled = false;
  if (failed) return micFailed(failed);
  render();
  $("#mute").focus(); // the banner that had the focus is gone
}

async function decline() {
  try {
    ownChange = true;
    await command("decline_invitation");
    invited = false;
    render();
    $("#hand").focus(); // the banner that had the focus is gone
  } catch (e) {
    showError(e, "Decline");
  }
}

function leftStage(message, resume = true) {
  if (mic.open) mic.close();
  if (socket) {
    // Back in the audience: the socket is for people on stage.
    socket.close();
    socket = null;
  }
  $("#player-status").textContent = message;
  if (resume && (room?.state || info?.state) === "live") {
    heartbeatLoop(true);
    player.play();
  }
}

async function leaveStage() {
  try {
    await command("move_to_audience", me());
  } catch (e) {
    showError(e, "Leave stage");
    return;
  }
  leftStage("You left the stage.");
  render();
}

async function toggleMute() {
  await mic.toggleSelfMute(mySeat, (name) => command(name, me()));
}

let endedHandled = false;
async function onEnded() {
  if (endedHandled) return;
  endedHandled = true;
  clearErrors(); // what went wrong while it was live no longer matters
  player.stop("The Space has ended");
  if (mic.open) mic.close();
  heartbeatLoop(false);
  if (socket) {
    socket.close();
    socket = null;
  }
  if (events) events.close();
  info = await waitForReplay(spaceId, info);
  render();
}

// -- start-up --------------------------------------------------------------------------

function connectEvents() {
  if (events || !info) return;
  events = roomEvents(info.audience.events, applyPublic);
}

async function load() {
  let attempt = 0;
  for (;;) {
    try {
      info = await api(`/api/spaces/${encodeURIComponent(spaceId)}`);
      break;
    } catch (e) {
      if (e instanceof ApiError && e.status === 404) return showProblem(linkProblem(e));
      showError(e, "Loading the Space");
      if (e instanceof ApiError && e.status >= 400 && e.status < 500 && e.status !== 429) return;
      await sleep(backoffDelay(attempt++, e.retryAfter) * 1000);
    }
  }
  player.hlsUrl = info.audience.hls;
  player.oggUrl = info.audience.ogg;
  room = info.room;
  render();
  if (info.state === "ended") return onEnded();
  if (session?.engaged) {
    // A reload while a hand was up: ask once where this listener stands.
    try {
      applyPersonal(await api(`/api/spaces/${spaceId}/room`, { token: session.token }));
    } catch (e) {
      console.warn("personal state after a reload", e);
    }
    if (handRaised || invited) engage();
  }
  // Before the start the audience port's SSE stream carries the waiting room: one push
  // connection, no polling; the start comes on it too.
  waiting.update(info.room);
  if (info.state === "scheduled") {
    $("#player-status").textContent = "Waiting for the host to start…";
    // Signed in while waiting, not in the start's rush; then an Ogg stream is held,
    // named by the session so the listener counts once from the first second.
    ensureSession()
      .catch(() => {})
      .finally(holdWhileWaiting);
  }
  connectEvents();
}

/** Where the player plays Ogg, open the stream before the start (held by the audience
 * port, no byte sent); an LL-HLS player starts at Go live instead (see hold()). */
function holdWhileWaiting() {
  if ((room?.state || info.state) !== "scheduled" || player.playing) return;
  player.sessionId = session?.session_id || "";
  player.hold();
}

$("#play").addEventListener("click", togglePlay);
$("#hand").addEventListener("click", toggleHand);
$("#accept").addEventListener("click", accept);
$("#decline").addEventListener("click", decline);
$("#leave-stage").addEventListener("click", leaveStage);
$("#mute").addEventListener("click", toggleMute);
$("#share").addEventListener("click", () => shareLink(listenLink(spaceId), $("#title").textContent, $("#share-status")));
$("#name-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const name = $("#name").value.trim();
  if (!name) return;
  $("#name-form").hidden = true;
  try {
    await ensureSession(name);
    if (player.playing) heartbeatLoop(true);
    const then = pendingAfterName;
    pendingAfterName = null;
    if (then) await then();
  } catch (e) {
    showError(e, "Sign-in");
  }
});
window.addEventListener("pagehide", () => {
  if (mic.open) mic.close();
});
// How far behind live the player is, once a second while it plays.
setInterval(() => {
  const el = $("#behind");
  const s = player.playing && document.body.dataset.audience === "playing" ? behindLive(player) : null;
  el.hidden = s === null;
  if (s !== null) el.textContent = s < 1.5 ? "About 1 s behind live" : `About ${Math.round(s)} s behind live`;
  document.body.dataset.behindS = s === null ? "" : s.toFixed(1);
}, 1000);
window.townhall = { player, mic, get session() { return session; }, get room() { return room; } };
note("page-loaded");
load();
