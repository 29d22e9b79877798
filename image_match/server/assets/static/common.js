// What both pages of the moderation page share: the API key, calls to the JSON API with their
// errors as one line, the progress indicator, and pictures fetched from the service.
"use strict";

const page = (() => {
  const body = document.body;
  const keyField = document.getElementById("api-key");
  const errorLine = document.getElementById("error");
  const statusLine = document.getElementById("status");
  const busy = document.getElementById("busy");
  const KEY = "image-match-api-key";
  let working = 0;

  // A service with keys shows the key field; the key lives in this tab's session storage only.
  if (body.dataset.keys === "required") {
    keyField.closest(".key").hidden = false;
    keyField.value = sessionStorage.getItem(KEY) || "";
    keyField.addEventListener("change", () => sessionStorage.setItem(KEY, keyField.value.trim()));
  }

  function headers(extra) {
    const all = Object.assign({}, extra);
    const key = keyField && keyField.value.trim();
    if (key) all["X-API-Key"] = key;
    return all;
  }

  // One line for any failure: the problem document's detail, else the status.
  async function reason(response) {
    try {
      const problem = await response.json();
      if (problem && typeof problem.detail === "string") return problem.detail;
    } catch (_) { /* not JSON */ }
    return `the service answered ${response.status} ${response.statusText}`.trim();
  }

  // A failure to show: its one-line message, and the HTTP status when the service answered.
  class Failure extends Error {
    constructor(message, status = null) {
      super(message);
      this.status = status;
    }
  }

  // fetch() through the page: the key added, the progress shown, a failure as a Failure whose
  // message is one line. Returns the Response.
  async function call(method, url, options = {}) {
    const init = {method, headers: headers(options.headers)};
    if (options.json !== undefined) {
      init.body = JSON.stringify(options.json);
      init.headers["Content-Type"] = "application/json";
    } else if (options.form !== undefined) {
      init.body = options.form;
    }
    working += 1;
    busy.hidden = false;
    try {
      let response;
      try {
        response = await fetch(url, init);
      } catch (_) {
        throw new Failure("the service cannot be reached (is image-match serve running?)");
      }
      if (!response.ok && !(options.accept || []).includes(response.status)) {
        throw new Failure(await reason(response), response.status);
      }
      return response;
    } finally {
      working -= 1;
      busy.hidden = working === 0;
    }
  }

  async function json(method, url, options) {
    return (await call(method, url, options)).json();
  }

  function showError(error) {
    const text = error instanceof Failure ? error.message : `unexpected: ${error}`;
    errorLine.textContent = text.split("\n")[0];
    if (!(error instanceof Failure)) console.error(error);
  }

  function clearMessages() {
    errorLine.textContent = "";
    if (statusLine) statusLine.textContent = "";
  }

  function say(text) {
    statusLine.textContent = text;
  }

  function element(tag, attributes = {}, ...children) {
    const made = document.createElement(tag);
    for (const [name, value] of Object.entries(attributes)) {
      if (name === "text") made.textContent = value;
      else if (name === "className") made.className = value;
      else made.setAttribute(name, value);
    }
    for (const child of children) if (child) made.append(child);
    return made;
  }

  // Pictures are asked for a few at a time: a page of large groups would otherwise fill the
  // service's signing queue at once (and be refused with 503 "busy").
  const PICTURES_AT_ONCE = 4;
  let picturesLoading = 0;
  const picturesWaiting = [];

  async function pictureTurn() {
    if (picturesLoading >= PICTURES_AT_ONCE) {
      await new Promise((resolve) => picturesWaiting.push(resolve));
    }
    picturesLoading += 1;
  }

  function pictureDone() {
    picturesLoading -= 1;
    const next = picturesWaiting.shift();
    if (next) next();
  }

  // Put the picture at `url` (a /v1/pictures route) into `figure`; what cannot be shown says
  // why in its place. Resolves to {width, height, bytes} of the original, or null.
  async function picture(figure, url, alt) {
    figure.replaceChildren(element("span", {className: "placeholder", text: "loading picture…"}));
    await pictureTurn();
    try {
      const response = await call("GET", url);
      const image = element("img", {alt});
      image.src = URL.createObjectURL(await response.blob());
      image.addEventListener("load", () => URL.revokeObjectURL(image.src), {once: true});
      figure.replaceChildren(image);
      const size = (name) => Number(response.headers.get(name)) || null;
      return {width: size("X-Image-Width"), height: size("X-Image-Height"),
              bytes: size("X-Image-Bytes")};
    } catch (error) {
      const text = error instanceof Failure ? error.message : String(error);
      figure.replaceChildren(element("span", {className: "unavailable",
                                              text: `picture unavailable: ${text}`}));
      return null;
    } finally {
      pictureDone();
    }
  }

  function distance(value) {
    return Number(value).toFixed(2);
  }

  function isDuplicate(value) {
    return Number(value) < Number(body.dataset.cutoff);
  }

  function bytes(count) {
    if (count == null) return "";
    if (count < 1024) return `${count} B`;
    if (count < 1024 * 1024) return `${(count / 1024).toFixed(0)} KB`;
    return `${(count / 1024 / 1024).toFixed(1)} MB`;
  }

  function metadataText(metadata) {
    if (!metadata || typeof metadata !== "object") return "";
    return Object.entries(metadata).map(([key, value]) =>
      `${key}=${typeof value === "string" ? value : JSON.stringify(value)}`).join(", ");
  }

  return {call, json, Failure, showError, clearMessages, say, element, picture, distance,
          isDuplicate, bytes, metadataText, cutoff: Number(body.dataset.cutoff)};
})();
