// Refreshes the status page from /health (and /checkins once the staff PIN is entered);
// mirrors gateway/status.py `view`.
(function () {
  "use strict";
  var VENUE_OFFSET_S = 7 * 3600; // Asia/Ho_Chi_Minh, fixed UTC+7
  var DISK_WARN = 0.8, DISK_FULL = 0.95;
  var MARKS = {"accepted": ["Đã ghi nhận", "Accepted", "ok"],
               "already checked in": ["Đã quét rồi", "Already checked in", "again"],
               "unreadable": ["Không đọc được", "Unreadable", "no"],
               "not saved": ["Chưa lưu được, quét lại", "Not saved, scan again", "no"]};
  var DROPPED = [["adverts", "quảng bá / adverts"], ["lost_records", "bản ghi / records"],
                 ["checkins_not_saved", "lượt quét / check-ins"], ["outbox_batches", "lô / batches"]];
  var refreshMs = Math.max(Number(document.body.dataset.refresh) || 5, 0.1) * 1000;
  var refreshed = 0;

  function clock(ts, seconds) {
    var iso = new Date((ts + VENUE_OFFSET_S) * 1000).toISOString();
    return iso.slice(11, seconds ? 19 : 16);
  }
  function pct(x) { return x === null || x === undefined ? "–" : Math.round(x * 100) + " %"; }
  function el(id) { return document.getElementById(id); }
  function text(id, value) { var e = el(id); if (e) { e.textContent = value; } }
  function meter(id, x) { var e = el(id); if (e) { e.value = x === null || x === undefined ? 0 : Math.min(x, 1); } }

  function render(h, checkins) {
    var st = h.state;
    el("state").className = "state state-" + st.code;
    text("state-vi", st.vi);
    text("state-en", st.en);
    var also = el("also");
    also.replaceChildren.apply(also, st.also.map(function (a) {
      var li = document.createElement("li");
      li.textContent = a.vi + " / " + a.en;
      return li;
    }));
    var p = h.phones;
    text("phones", p ? String(p.phones) : "–");
    text("share", p ? pct(p.bluezone_share) : "–");
    var disk = el("disk");
    disk.textContent = pct(h.disk.fill);
    disk.className = "v" + (h.disk.fill >= DISK_FULL ? " bad" : h.disk.fill >= DISK_WARN ? " warn" : "");
    meter("disk-bar", h.disk.fill);
    text("outbox", String(h.outbox.depth));
    text("outbox-fill", "lô / batches · " + pct(h.outbox.fill) + " đầy / full");
    meter("outbox-bar", h.outbox.fill);
    text("last-sync", h.link.last_sync ? clock(h.link.last_sync) : "chưa / never");
    var d = h.dropped || {}, total = 0, parts = [];
    DROPPED.forEach(function (p) {
      var n = Number(d[p[0]]) || 0;
      total += n;
      if (n) { parts.push(n + " " + p[1]); }
    });
    var dropped = el("dropped");
    if (dropped) { dropped.textContent = String(total); dropped.className = "v" + (total ? " bad" : ""); }
    text("dropped-detail", parts.join(" · "));
    var list = el("checkins");
    if (list && checkins) list.replaceChildren.apply(list, checkins.map(function (c) {
      var mark = MARKS[c.state] || [c.state, c.state, ""];
      var li = document.createElement("li");
      var t = document.createElement("span");
      t.className = "t";
      t.textContent = clock(c.ts);
      var m = document.createElement("span");
      m.className = mark[2];
      m.textContent = mark[0] + " / " + mark[1];
      li.append(t, m, c.masked ? " " + c.masked : "");
      return li;
    }));
    text("updated", clock(h.ts, true));
  }

  function get(path) {
    return fetch(path, {cache: "no-store"}).then(function (r) {
      if (!r.ok) { throw new Error(path + ": HTTP " + r.status); }
      return r.json();
    });
  }

  // the last check-ins are the staff's, behind the PIN: asked for only while unlocked
  var unlocked = document.body.dataset.unlocked === "1";

  function tick() {
    var checkins = unlocked ? fetch("checkins", {cache: "no-store"}).then(function (r) {
      if (r.status === 401) { location.reload(); throw new Error("PIN session ended"); }
      if (!r.ok) { throw new Error("checkins: HTTP " + r.status); }
      return r.json();
    }) : Promise.resolve(null);
    Promise.all([get("health"), checkins]).then(function (got) {
      render(got[0], got[1]);
      document.body.classList.remove("stale");
      refreshed += 1;
      document.body.dataset.refreshed = String(refreshed);
    }).catch(function () {
      document.body.classList.add("stale");
      text("updated", "không cập nhật được / cannot refresh");
    }).then(function () { setTimeout(tick, refreshMs); });
  }
  setTimeout(tick, refreshMs);
})();
