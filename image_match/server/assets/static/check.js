// "Check an image": search the store for the chosen file or URL, show each match beside the
// query, and add the query to the store with its metadata.
"use strict";

(() => {
  const form = document.getElementById("query");
  const fileInput = document.getElementById("image");
  const urlInput = document.getElementById("url");
  const drop = document.getElementById("drop");
  const queryPicture = document.getElementById("query-picture");
  const summary = document.getElementById("summary");
  const list = document.getElementById("matches");
  const addButton = document.getElementById("add");

  // One image at a time: choosing a file clears the URL, typing a URL clears the file.
  fileInput.addEventListener("change", () => {
    if (fileInput.files.length) urlInput.value = "";
    showQuery();
  });
  urlInput.addEventListener("input", () => {
    if (urlInput.value) fileInput.value = "";
  });
  urlInput.addEventListener("change", showQuery);

  drop.addEventListener("dragover", (event) => {
    event.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    if (event.dataTransfer.files.length) {
      fileInput.files = event.dataTransfer.files;
      fileInput.dispatchEvent(new Event("change"));
    }
  });

  // The image chosen: {file} or {url}; a Failure when there is none.
  function chosen() {
    const url = urlInput.value.trim();
    if (url) {
      if (!/^https?:\/\/\S+$/i.test(url)) {
        throw new page.Failure(`Image URL ${url}: must be an http:// or https:// URL`);
      }
      return {url};
    }
    if (fileInput.files.length) return {file: fileInput.files[0]};
    throw new page.Failure("choose an image file (Image) or enter its URL (Image URL) first");
  }

  let shownQuery = null;

  function showQuery() {
    let query;
    try {
      query = chosen();
    } catch (_) {
      queryPicture.hidden = true;
      return;
    }
    const key = query.url || query.file;
    if (key === shownQuery) return;
    shownQuery = key;
    queryPicture.hidden = false;
    if (query.file) {
      const image = page.element("img", {alt: `query: ${query.file.name}`});
      image.src = URL.createObjectURL(query.file);
      image.addEventListener("load", () => URL.revokeObjectURL(image.src), {once: true});
      queryPicture.replaceChildren(image, page.element("figcaption", {text: query.file.name}));
    } else {
      const holder = page.element("div");
      queryPicture.replaceChildren(holder, page.element("figcaption", {text: query.url}));
      page.picture(holder, `/v1/pictures?url=${encodeURIComponent(query.url)}`,
                   `query: ${query.url}`);
    }
  }

  // A request body for /v1/search or /v1/images: multipart with the file, or JSON with the URL.
  function body(query, fields) {
    if (query.url) return {json: Object.assign({url: query.url}, fields)};
    const form = new FormData();
    form.append("image", query.file, query.file.name);
    for (const [name, value] of Object.entries(fields)) {
      form.append(name, typeof value === "object" ? JSON.stringify(value) : String(value));
    }
    return {form};
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    page.clearMessages();
    try {
      const query = chosen();
      showQuery();
      list.setAttribute("aria-busy", "true");
      summary.textContent = "Searching…";
      const found = await page.json("POST", "/v1/search", body(query, {
        top: 20,
        all_orientations: document.getElementById("all-orientations").checked,
        robust: document.getElementById("robust").checked,
      }));
      showMatches(found.matches);
    } catch (error) {
      summary.textContent = "";
      list.replaceChildren();
      page.showError(error);
    } finally {
      list.removeAttribute("aria-busy");
    }
  });

  function showMatches(matches) {
    summary.textContent = matches.length === 0 ? "No stored copy found." :
      `${matches.length} stored ${matches.length === 1 ? "copy" : "copies"} found, nearest first.`;
    list.replaceChildren(...matches.map((match) => {
      const figure = page.element("figure", {className: "picture"});
      page.picture(figure, `/v1/pictures/${encodeURIComponent(match.id)}`, match.path);
      const duplicate = page.isDuplicate(match.dist);
      const facts = page.element("dl", {},
        page.element("dt", {text: "Distance"}),
        page.element("dd", {className: "distance", text: page.distance(match.dist)}),
        page.element("dt", {text: "Verdict"}),
        page.element("dd", {className: duplicate ? "verdict duplicate" : "verdict",
                            text: duplicate ? `duplicate (below ${page.cutoff})`
                                            : `not a duplicate (cutoff ${page.cutoff})`}),
        page.element("dt", {text: "Path"}),
        page.element("dd", {className: "path", text: match.path}),
        page.element("dt", {text: "Metadata"}),
        page.element("dd", {className: "metadata", text: page.metadataText(match.metadata) || "none"}));
      return page.element("li", {className: "match", role: "listitem"}, figure, facts);
    }));
  }

  // key=value lines as a JSON object; a value that reads as a JSON number, true/false or a
  // quoted string is that (as the CLI's --metadata), any other is the text itself.
  function metadata() {
    const result = {};
    const lines = document.getElementById("metadata").value.split("\n");
    lines.forEach((line, index) => {
      if (!line.trim()) return;
      const at = line.indexOf("=");
      const key = at < 0 ? "" : line.slice(0, at).trim();
      if (!key) {
        throw new page.Failure(`Metadata line ${index + 1} "${line.trim()}": expected key=value`);
      }
      const text = line.slice(at + 1).trim();
      let value = text;
      try {
        const parsed = JSON.parse(text);
        if (["number", "string", "boolean"].includes(typeof parsed)) value = parsed;
      } catch (_) { /* plain text */ }
      result[key] = value;
    });
    return Object.keys(result).length ? result : null;
  }

  addButton.addEventListener("click", async () => {
    page.clearMessages();
    try {
      const query = chosen();
      const fields = {refresh: true};
      const data = metadata();
      if (data) fields.metadata = data;
      const path = document.getElementById("path").value.trim();
      if (path) fields.path = path;
      const added = await page.json("POST", "/v1/images", body(query, fields));
      page.say(`${added.status === "replaced" ? "Replaced" : "Added"} ${added.path} ` +
               `(id ${added.id}): the next upload of it is caught.`);
    } catch (error) {
      page.showError(error);
    }
  });
})();
