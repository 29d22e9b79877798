// "Review duplicates": the store's groups of near-duplicates, largest first, a page at a time;
// per member Keep (measure the others against it) and Delete (its record, once confirmed); per
// group "Not duplicates" (remembered by the store: the group never shows again).
"use strict";

(() => {
  // Groups a page: 10, or ?groups=N in the page's address (1 to 100).
  const asked = Number(new URLSearchParams(window.location.search).get("groups"));
  const GROUPS_A_PAGE = Number.isInteger(asked) && asked >= 1 && asked <= 100 ? asked : 10;
  const list = document.getElementById("groups");
  const previous = document.getElementById("previous");
  const next = document.getElementById("next");
  const pageNumber = document.getElementById("page-number");
  const reload = document.getElementById("reload");
  // The cursors of the pages seen: cursors[i] opens page i + 1 (null: the first).
  let cursors = [null];
  let current = 0;
  let following = null;
  let total = null;

  async function load(index, refresh = false) {
    page.clearMessages();
    if (index === 0) cursors = [null];  // the first page may come from groups computed anew
    const cursor = cursors[index];
    const query = new URLSearchParams({limit: GROUPS_A_PAGE, all_orientations: "true"});
    if (cursor) query.set("cursor", cursor);
    if (refresh) query.set("refresh", "true");
    list.setAttribute("aria-busy", "true");
    try {
      let answer;
      for (;;) {
        const response = await page.call("GET", `/v1/duplicates?${query}`, {accept: [202]});
        answer = await response.json();
        if (response.status !== 202) break;
        page.say(`Finding groups among ${answer.records} records…`);
        query.delete("refresh");
        await new Promise((resolve) => setTimeout(resolve, 1000));
      }
      current = index;
      following = answer.next;
      total = answer.total;
      if (following) cursors[index + 1] = following;
      show(answer.groups);
    } catch (error) {
      if (error instanceof page.Failure && error.status === 409 && index > 0) {
        // The store changed and its groups were computed again: their pages start afresh.
        await load(0);
        page.say("The groups were found again since that page; here is the first one.");
        return;
      }
      page.showError(error);
    } finally {
      list.removeAttribute("aria-busy");
    }
  }

  function show(groups) {
    const first = current * GROUPS_A_PAGE;
    list.setAttribute("start", first + 1);
    list.replaceChildren(...groups.map((members, index) => group(members, first + index + 1)));
    page.say(total === 0 ? "No duplicates in the store." :
      `${total} ${total === 1 ? "group" : "groups"} of duplicates, largest first.`);
    const pages = Math.max(1, Math.ceil((total || 0) / GROUPS_A_PAGE));
    pageNumber.textContent = `page ${current + 1} of ${pages}`;
    previous.disabled = current === 0;
    next.disabled = !following;
  }

  function group(members, number) {
    const heading = page.element("h2", {id: `group-${number}`});
    const item = page.element("li", {className: "group", role: "listitem",
                                     "aria-labelledby": heading.id});
    const people = page.element("ul", {className: "members", role: "list"});
    const distinct = page.element("button", {type: "button", text: "Not duplicates"});
    item.append(page.element("div", {className: "group-head"}, heading, distinct), people);
    const state = {members: members.slice(), kept: members[0].id};

    function render() {
      heading.textContent = `Group ${number}: ${state.members.length} pictures`;
      people.replaceChildren(...state.members.map((member) => memberItem(member, state, render,
                                                                         item)));
    }

    distinct.addEventListener("click", async () => {
      page.clearMessages();
      try {
        await page.json("POST", "/v1/duplicates/not-duplicates",
                        {json: {ids: state.members.map((member) => member.id)}});
        page.say(`Group ${number} marked "not duplicates": it will not show again.`);
        leave(item);
      } catch (error) {
        page.showError(error);
      }
    });
    render();
    return item;
  }

  function memberItem(member, state, render, groupItem) {
    const kept = member.id === state.kept;
    if (!member.figure) {  // asked for once; a group drawn again (Keep, Delete) reuses them
      member.figure = page.element("figure", {className: "picture"});
      member.size = page.picture(member.figure, `/v1/pictures/${encodeURIComponent(member.id)}`,
                                 member.path)
        .then((facts) => facts && facts.width ?
          `${facts.width} × ${facts.height} px, ${page.bytes(facts.bytes)}` : "unknown");
      member.date = page.json("GET", `/v1/images/${encodeURIComponent(member.id)}`)
        .then((record) => record.timestamp ?
          `${record.timestamp.slice(0, 19).replace("T", " ")} UTC` : "unknown")
        .catch(() => "unknown");
    }
    const figure = member.figure;
    const size = page.element("dd", {className: "size", text: "…"});
    const date = page.element("dd", {className: "date", text: "…"});
    member.size.then((text) => { size.textContent = text; });
    member.date.then((text) => { date.textContent = text; });
    const facts = page.element("dl", {},
      page.element("dt", {text: "Path"}), page.element("dd", {className: "path", text: member.path}),
      page.element("dt", {text: "Size"}), size,
      page.element("dt", {text: kept ? "Kept" : "Distance"}),
      page.element("dd", {className: "distance",
                          text: kept ? "this one" : page.distance(member.dist)}),
      page.element("dt", {text: "Added"}), date,
      page.element("dt", {text: "Metadata"}),
      page.element("dd", {className: "metadata", text: page.metadataText(member.metadata) || "none"}));
    const keep = page.element("button", {type: "button", text: "Keep"});
    keep.disabled = kept;
    const remove = page.element("button", {type: "button", className: "danger", text: "Delete"});
    const item = page.element("li", {className: kept ? "member kept" : "member", role: "listitem"},
                              figure, facts, page.element("p", {className: "actions"}, keep, remove));

    keep.addEventListener("click", async () => {
      page.clearMessages();
      try {
        const answer = await page.json("POST", "/v1/duplicates/distances", {json: {
          kept: member.id, ids: state.members.map((other) => other.id)}});
        state.kept = member.id;
        state.members = state.members.filter((other) => other.id in answer.distances);
        for (const other of state.members) other.dist = answer.distances[other.id];
        state.members.sort((a, b) => (a.id !== state.kept) - (b.id !== state.kept) || a.dist - b.dist);
        render();
        page.say(`Keeping ${member.path}; distances are to it now.`);
        groupItem.querySelector(".member.kept button.danger").focus();
      } catch (error) {
        page.showError(error);
      }
    });

    remove.addEventListener("click", async () => {
      page.clearMessages();
      if (!window.confirm(`Delete the record of ${member.path}? (An image file is not touched.)`)) {
        return;
      }
      try {
        await page.call("DELETE", `/v1/images/${encodeURIComponent(member.id)}`, {accept: [404]});
        page.say(`Deleted the record of ${member.path}.`);
        state.members = state.members.filter((other) => other.id !== member.id);
        if (state.members.length < 2) {
          leave(groupItem);
        } else {
          if (state.kept === member.id) state.kept = state.members[0].id;
          render();
          groupItem.querySelector("button").focus();
        }
      } catch (error) {
        page.showError(error);
      }
    });
    return item;
  }

  // A group settled: out of the list, the focus on the next group (or the page's own buttons).
  function leave(item) {
    const after = item.nextElementSibling || item.previousElementSibling;
    item.remove();
    if (total) total -= 1;
    (after ? after.querySelector("button") : reload).focus();
    if (!list.children.length && following) load(current);
  }

  previous.addEventListener("click", () => load(current - 1));
  next.addEventListener("click", () => load(current + 1));
  reload.addEventListener("click", () => load(0, true));
  load(0);
})();
