// The web page of `vidx serve`: ask, see the cited moments on each stream's timeline, click a
// thumbnail to play the source there, watch live streams' latest frames, follow the alerts of the
// standing queries as they are raised and play their clips. No build step.
"use strict";

const $ = (selector) => document.querySelector(selector);
const POLL_MS = 2000;
const MAX_ALERTS = 200;  // shown in the feed; older ones drop off the end

const state = {
  token: "",
  streams: new Map(),   // stream_id -> the /api/streams entry
  history: [],          // [{question, answer}] of this conversation
  alerts: new Map(),    // alert_id -> its latest state (GET /api/alerts, then the feed)
  feed: null,           // the EventSource on api/alerts/stream
};

// -- the token: from ?token=... once (then out of the address bar), kept for this tab -----------
function loadToken() {
  const params = new URLSearchParams(location.search);
  if (params.has("token")) {
    sessionStorage.setItem("vidx-token", params.get("token"));
    history.replaceState(null, "", location.pathname);
  }
  state.token = sessionStorage.getItem("vidx-token") || "";
}

function withToken(url) {
  return state.token ? `${url}${url.includes("?") ? "&" : "?"}token=${encodeURIComponent(state.token)}` : url;
}

async function api(path, body, method = body === undefined ? "GET" : "POST") {
  const headers = {};
  if (state.token) headers.Authorization = `Bearer ${state.token}`;
  const options = { headers, method };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  const response = await fetch(path, options);
  if (response.status === 401) {
    $("#auth").hidden = false;
    $("#token").focus();
  }
  const data = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(data.detail || `${response.status} ${response.statusText}`);
  return data;
}

// -- helpers ---------------------------------------------------------------------------------------
function clock(seconds) {
  const total = Math.floor(seconds);
  const h = Math.floor(total / 3600), m = Math.floor((total % 3600) / 60), s = total % 60;
  const pad = (n) => String(n).padStart(2, "0");
  return h ? `${h}:${pad(m)}:${pad(s)}` : `${m}:${pad(s)}`;
}

function el(tag, props = {}, ...children) {
  const node = Object.assign(document.createElement(tag), props);
  for (const child of children) node.append(child);
  return node;
}

function thumbnailUrl(frameId) {
  return withToken(`api/frames/${frameId}/thumbnail.jpg`);
}

function say(text) {
  $("#status").textContent = text;
}

// -- streams (and live streams' latest frames) -----------------------------------------------------
async function pollStreams() {
  try {
    const { streams } = await api("api/streams");
    state.streams = new Map(streams.map((s) => [s.stream_id, s]));
    renderStreams(streams);
    renderLiveTiles(streams);
  } catch (error) {
    say(`Streams: ${error.message}`);
  }
  setTimeout(pollStreams, POLL_MS);
}

function streamLength(stream) {
  if (stream.duration_s) return stream.duration_s;
  const last = stream.latest_pts_s ?? stream.watermark_s ?? 0;
  return last + 1 / stream.fps;
}

function renderStreams(streams) {
  const list = $("#streams");
  const choices = $("#stream-choices");
  const ids = streams.map((s) => s.stream_id).join("\n");
  if (choices.dataset.ids !== ids) {  // rebuilt only when the streams change: keeps focus and ticks
    choices.dataset.ids = ids;
    const ticked = new Set([...choices.querySelectorAll("input:checked")].map((box) => box.value));
    choices.replaceChildren(...streams.map((s) => {
      const box = el("input", { type: "checkbox", value: s.stream_id, id: `choose-${s.stream_id}`,
                                checked: ticked.has(s.stream_id) });
      return el("span", { className: "choice" }, box, el("label", { htmlFor: box.id, textContent: s.stream_id }));
    }));
  }
  for (const s of streams) {
    let item = list.querySelector(`li[data-stream="${CSS.escape(s.stream_id)}"]`);
    if (!item) {
      item = el("li", { className: "stream" });
      item.dataset.stream = s.stream_id;
      item.append(el("strong", { textContent: s.stream_id }), el("span", { className: "meta" }));
      list.append(item);
    }
    const status = s.error ? `failed: ${s.error}` : s.live ? (s.complete ? "live, ended" : "live")
                 : s.complete ? "indexed" : "indexing";
    item.querySelector(".meta").textContent =
      ` ${status} · ${clock(streamLength(s))} · ${s.frames} frames${s.gaps ? ` · ${s.gaps} gaps` : ""} · ${s.uri}`;
    if (s.live && s.latest_frame_id !== null) {
      let img = item.querySelector("img.latest");
      if (!img) item.append(img = el("img", { className: "latest" }));
      if (img.dataset.frame !== String(s.latest_frame_id)) {
        img.dataset.frame = s.latest_frame_id;
        img.src = thumbnailUrl(s.latest_frame_id);
        img.alt = `latest frame of ${s.stream_id}, at ${clock(s.latest_pts_s)}`;
      }
    }
  }
}

// -- monitor: live tiles, the alert feed, standing queries -------------------------------------------
function renderLiveTiles(streams) {
  const tiles = $("#live-tiles");
  const live = streams.filter((s) => s.live);
  const ids = new Set(live.map((s) => s.stream_id));
  for (const tile of tiles.querySelectorAll("li.tile")) if (!ids.has(tile.dataset.stream)) tile.remove();
  $("#no-live").hidden = live.length > 0;
  for (const s of live) {
    let tile = tiles.querySelector(`li[data-stream="${CSS.escape(s.stream_id)}"]`);
    if (!tile) {
      tile = el("li", { className: "tile" }, el("img", { className: "frame", alt: "" }), el("span"));
      tile.dataset.stream = s.stream_id;
      tiles.append(tile);
    }
    const status = s.error ? `failed: ${s.error}` : s.complete ? "ended" : "live";
    const img = tile.querySelector("img");
    if (s.latest_frame_id !== null && img.dataset.frame !== String(s.latest_frame_id)) {
      img.dataset.frame = s.latest_frame_id;
      img.src = thumbnailUrl(s.latest_frame_id);
      img.alt = `${s.stream_id}, at ${clock(s.latest_pts_s)}`;
    }
    tile.querySelector("span").textContent = `${s.stream_id} · ${status}`
      + (s.latest_pts_s !== null ? ` · ${clock(s.latest_pts_s)}` : " · no frame yet");
  }
}

async function startAlerts() {
  if (state.feed) state.feed.close();
  state.feed = null;
  try {
    const { generation, alerts } = await api("api/alerts?limit=50");
    for (const alert of alerts.reverse()) showAlert(alert);  // oldest first: the newest ends on top
    openFeed(generation);
  } catch (error) {
    $("#feed-status").textContent = `Alerts: ${error.message}`;
  }
}

function openFeed(after) {
  // EventSource sends no headers: the token goes as ?token=. After the list's generation, so no
  // alert falls between the two; on a reconnect the browser sends Last-Event-ID, which wins.
  const feed = new EventSource(withToken(`api/alerts/stream?after=${after}`));
  state.feed = feed;
  const onAlert = (event) => showAlert(JSON.parse(event.data));
  feed.addEventListener("alert.opened", onAlert);
  feed.addEventListener("alert.closed", onAlert);
  feed.addEventListener("open", () => {
    $("#feed-status").textContent = "Live: new alerts appear here as they are raised.";
  });
  feed.addEventListener("error", () => {
    $("#feed-status").textContent = feed.readyState === EventSource.CLOSED
      ? "The alert feed stopped (check the token, then reload the page)." : "Reconnecting to the alert feed…";
  });
}

function alertSpan(alert) {
  const span = `${clock(alert.start_s)}–${alert.end_s === null ? "now" : clock(alert.end_s)}`;
  const wall = alert.wall_start ? ` · ${new Date(alert.wall_start * 1000).toLocaleString()}` : "";
  return `${span}${wall}`;
}

function showAlert(alert) {
  state.alerts.set(alert.alert_id, alert);
  const list = $("#alerts");
  const old = list.querySelector(`li[data-alert="${CSS.escape(alert.alert_id)}"]`);
  const label = `${alert.stream_id} ${alertSpan(alert)}`;
  const picture = alert.thumbnail_url
    // ?v=: the closing row may show another frame under the same URL
    ? el("img", { src: withToken(`${alert.thumbnail_url}?v=${alert.raised_at}`), alt: `${alert.condition} on ${label}` })
    : el("span", { className: "no-picture", textContent: "no picture" });
  const button = el("button", { type: "button", className: "alert",
                                title: alert.clip_url ? `Play the clip of ${label}` : `${label} (no clip yet)` },
    picture,
    el("span", { className: "alert-text" },
      el("span", { className: `badge ${alert.status}`, textContent: alert.status }), " ",
      el("strong", { textContent: alert.stream_id }), ` · ${alertSpan(alert)}`, el("br"),
      el("span", { className: "condition", textContent: alert.condition }), el("br"),
      el("span", { className: "meta", textContent: alert.answer })));
  button.addEventListener("click", () => playClip(alert.alert_id));
  const item = el("li", {}, button);
  item.dataset.alert = alert.alert_id;
  item.dataset.status = alert.status;
  if (old) old.replaceWith(item);  // a closing row: same place, its clip now there
  else list.prepend(item);
  while (list.children.length > MAX_ALERTS) list.lastElementChild.remove();
  $("#no-alerts").hidden = true;
}

function playClip(alertId) {
  const alert = state.alerts.get(alertId);
  const video = $("#alert-player");
  $("#alert-clip").hidden = false;
  if (!alert.clip_url) {
    video.removeAttribute("src");
    video.load();
    $("#alert-caption").textContent = alert.status === "open"
      ? "This alert is still open: its clip is cut when the event ends." : "No clip could be cut for this alert.";
    return;
  }
  $("#alert-caption").textContent = `${alert.condition} · ${alert.stream_id} `
    + `${clock(alert.clip_start_s)}–${clock(alert.clip_end_s)}`
    + (alert.clip_covered === false ? " (the recording did not cover all of it)" : "");
  video.dataset.alert = alertId;
  video.src = withToken(alert.clip_url);
  video.play().catch(() => {});  // a browser may refuse autoplay; the controls still work
  video.scrollIntoView({ block: "nearest" });
}

async function loadQueries() {
  try {
    const { queries } = await api("api/watch");
    renderQueries(queries);
  } catch (error) {
    $("#watch-status").textContent = `Standing queries: ${error.message}`;
  }
}

function renderQueries(queries) {
  $("#no-queries").hidden = queries.length > 0;
  $("#watch-list").replaceChildren(...queries.map((q) => {
    const what = q.kind === "condition" ? `“${q.condition}”` : q.kind.replace("_", " ");
    const where = q.streams.length ? q.streams.join(", ") : "every stream";
    const hooks = q.webhooks.length ? ` · ${q.webhooks.length} webhook${q.webhooks.length > 1 ? "s" : ""}` : "";
    const path = `api/watch/${encodeURIComponent(q.id)}`;
    const toggle = el("button", { type: "button", className: "toggle", textContent: q.paused ? "Resume" : "Pause" });
    toggle.addEventListener("click", () => changeQuery(path, { paused: !q.paused }, "PATCH"));
    const remove = el("button", { type: "button", className: "remove", textContent: "Remove" });
    remove.addEventListener("click", () => changeQuery(path, undefined, "DELETE"));
    const item = el("li", { className: q.paused ? "query paused" : "query" }, el("strong", { textContent: q.id }),
      ` ${what} · ${where}${hooks}${q.paused ? " · paused" : ""} `, toggle, " ", remove);
    item.dataset.query = q.id;
    return item;
  }));
}

async function changeQuery(path, body, method) {
  try {
    await api(path, body, method);
    $("#watch-status").textContent = "";
  } catch (error) {
    $("#watch-status").textContent = `Could not change it: ${error.message}`;
  }
  loadQueries();
}

async function addQuery(event) {
  event.preventDefault();
  const kind = $("#watch-kind").value;
  const body = { kind };
  if (kind === "condition") body.condition = $("#watch-condition").value.trim();
  const streams = $("#watch-streams").value.split(",").map((s) => s.trim()).filter(Boolean);
  if (streams.length) body.streams = streams;
  if ($("#watch-cooldown").value !== "") body.cooldown_s = Number($("#watch-cooldown").value);
  if ($("#watch-webhook").value.trim()) body.webhooks = [{ url: $("#watch-webhook").value.trim() }];
  const status = $("#watch-status");
  try {
    const query = await api("api/watch", body);
    $("#watch-form").reset();
    syncWatchForm();
    status.replaceChildren(`Added ${query.id}.`);
    for (const hook of query.webhooks) {  // the only time the server shows it
      status.append(" Webhook secret for ", hook.url, " (shown only now): ", el("code", { textContent: hook.secret }));
    }
  } catch (error) {
    status.textContent = `Could not add it: ${error.message}`;
  }
  loadQueries();
}

function syncWatchForm() {
  const condition = $("#watch-kind").value === "condition";
  $("#watch-condition").disabled = !condition;
  $("#watch-condition").required = condition;
}

// -- asking ----------------------------------------------------------------------------------------
async function ask(event) {
  event.preventDefault();
  const question = $("#question").value.trim();
  if (!question) return;
  const body = { question, history: state.history };
  const streams = [...$("#stream-choices").querySelectorAll("input:checked")].map((box) => box.value);
  if (streams.length) body.streams = streams;
  if ($("#from-s").value !== "") body.from_s = Number($("#from-s").value);
  if ($("#to-s").value !== "") body.to_s = Number($("#to-s").value);
  $("#ask-button").disabled = true;
  say("Thinking…");
  const started = performance.now();
  try {
    const answer = await api("api/ask", body);
    state.history = answer.history;
    renderAnswer(answer, (performance.now() - started) / 1000);
    $("#question").value = "";
    say(`Answered with ${answer.citations.length} cited moment${answer.citations.length === 1 ? "" : "s"}.`);
  } catch (error) {
    say(`Could not answer: ${error.message}`);
  } finally {
    $("#ask-button").disabled = false;
  }
}

function renderAnswer(answer, seconds) {
  $("#answer").hidden = false;
  $("#answer-text").textContent = answer.text || "(no answer text)";
  $("#answer-meta").textContent = `${answer.mode} mode · ${answer.frames} frames sent · `
    + `${answer.prompt_tokens} prompt tokens · ${seconds.toFixed(1)} s`
    + (answer.recomputed_frames ? ` · ${answer.recomputed_frames} frames' features recomputed from the source` : "");
  // frames that went without their context token (no patch features, nothing to recompute them from)
  $("#answer-degraded").hidden = !answer.degraded.length;
  $("#answer-degraded").replaceChildren(...answer.degraded.map((d) => el("li", {
    textContent: `${d.stream_id} ${clock(d.start_s)}–${clock(d.end_s)} (${d.frames} frame${d.frames === 1 ? "" : "s"}): `
      + `content tokens only: ${d.reason}` })));
  const earlier = answer.history.slice(0, -1);
  $("#conversation").replaceChildren(...earlier.map((turn) => el("p", { className: "turn" },
    el("strong", { textContent: "Q: " }), turn.question, el("br"), el("strong", { textContent: "A: " }), turn.answer)));

  const byStream = new Map();
  for (const c of answer.citations) {
    if (!byStream.has(c.stream_id)) byStream.set(c.stream_id, []);
    byStream.get(c.stream_id).push(c);
  }
  $("#timelines").replaceChildren(...[...byStream].map(([streamId, citations]) => timeline(streamId, citations)));
  if (!byStream.size) $("#timelines").textContent = "No moments cited.";
}

function timeline(streamId, citations) {
  const stream = state.streams.get(streamId);
  const length = Math.max(stream ? streamLength(stream) : 0, ...citations.map((c) => c.end_s + 1));
  const bar = el("div", { className: "bar", title: `${streamId}: 0:00 to ${clock(length)}` });
  bar.setAttribute("aria-hidden", "true");  // the thumbnails below say the same in words
  const thumbs = el("ul", { className: "thumbs" });
  for (const c of citations) {
    const mark = el("span", { className: "mark" });
    mark.style.left = `${(100 * c.start_s) / length}%`;
    mark.style.width = `max(3px, ${(100 * (c.end_s - c.start_s)) / length}%)`;
    mark.addEventListener("click", () => play(streamId, c.start_s));
    bar.append(mark);

    const label = `${streamId} ${clock(c.start_s)}–${clock(c.end_s)}`;
    const button = el("button", { type: "button", className: "thumb", title: `Play ${label}` },
      el("img", { src: thumbnailUrl(c.best_frame_id), alt: `frame ${c.best_frame_id} of ${label}` }),
      el("span", { textContent: label }));
    button.dataset.stream = streamId;
    button.dataset.start = c.start_s;
    button.dataset.frame = c.best_frame_id;
    button.addEventListener("click", () => play(streamId, c.start_s));
    thumbs.append(el("li", {}, button));
  }
  return el("section", { className: "timeline" },
    el("h4", { textContent: `${streamId} (${clock(length)})` }), bar, thumbs);
}

// -- playing the source at a moment -----------------------------------------------------------------
function play(streamId, start) {
  const video = $("#player");
  const stream = state.streams.get(streamId);
  $("#player-section").hidden = false;
  if (stream && !stream.media) {
    $("#player-caption").textContent = !stream.live && stream.protocol === "file"
      ? `${streamId} is a local file this server does not play: start it with --media-root DIR (the folder `
        + "that holds the file) to play it here."
      : `${streamId} is a ${stream.live ? "live " : ""}${stream.protocol} source: `
        + (stream.live ? "it has no recording to play (index.retention.recording_s)." : "there is no archived file to play.");
    return;
  }
  $("#player-caption").textContent = `${streamId} from ${clock(start)}`;
  if (stream && stream.live) {
    // a live stream plays its recording: an MP4 from the keyframe at or before `start`
    video.dataset.stream = "";
    video.addEventListener("loadedmetadata", () => video.play().catch(() => {}), { once: true });
    video.src = withToken(`api/streams/${encodeURIComponent(streamId)}/media?start_s=${start}`);
    video.dataset.start = start;
    video.scrollIntoView({ block: "nearest" });
    return;
  }
  const seek = () => {
    video.currentTime = start;
    video.play().catch(() => {});  // a browser may refuse autoplay; the controls still work
  };
  if (video.dataset.stream !== streamId) {
    video.dataset.stream = streamId;
    video.addEventListener("loadedmetadata", seek, { once: true });
    video.src = withToken(`api/streams/${encodeURIComponent(streamId)}/media`);
  } else if (video.readyState >= HTMLMediaElement.HAVE_METADATA) {
    seek();
  } else {
    video.addEventListener("loadedmetadata", seek, { once: true });
  }
  video.dataset.start = start;
  video.scrollIntoView({ block: "nearest" });
}

// -- start ------------------------------------------------------------------------------------------
loadToken();
$("#ask-form").addEventListener("submit", ask);
$("#question").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey) $("#ask-form").requestSubmit();
});
$("#new-conversation").addEventListener("click", () => {
  state.history = [];
  $("#conversation").replaceChildren();
  $("#answer").hidden = true;
  say("New conversation.");
});
$("#token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  state.token = $("#token").value;
  sessionStorage.setItem("vidx-token", state.token);
  $("#auth").hidden = true;
  say("Token set.");
  startAlerts();
  loadQueries();
});
// leaving the page: end the feed (else a page kept in the back/forward cache holds its connection open)
window.addEventListener("pagehide", () => {
  if (state.feed) state.feed.close();
  state.feed = null;
});
window.addEventListener("pageshow", (event) => {
  if (event.persisted) startAlerts();  // back from that cache: pick up what was missed
});
$("#watch-form").addEventListener("submit", addQuery);
$("#watch-kind").addEventListener("change", syncWatchForm);
syncWatchForm();
pollStreams();
startAlerts();
loadQueries();
