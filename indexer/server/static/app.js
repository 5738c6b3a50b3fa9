// The web page of `vidx serve`: ask, see the cited moments on each stream's timeline, click a
// thumbnail to play the source there, and watch live streams' latest frames. No build step.
"use strict";

const $ = (selector) => document.querySelector(selector);
const POLL_MS = 3000;

const state = {
  token: "",
  streams: new Map(),   // stream_id -> the /api/streams entry
  history: [],          // [{question, answer}] of this conversation
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

async function api(path, body) {
  const headers = {};
  if (state.token) headers.Authorization = `Bearer ${state.token}`;
  const options = { headers };
  if (body !== undefined) {
    options.method = "POST";
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
    + `${answer.prompt_tokens} prompt tokens · ${seconds.toFixed(1)} s`;
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
    $("#player-caption").textContent = `${streamId} is a ${stream.live ? "live " : ""}${stream.protocol} source: `
      + "there is no archived file to play.";
    return;
  }
  $("#player-caption").textContent = `${streamId} from ${clock(start)}`;
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
});
pollStreams();
