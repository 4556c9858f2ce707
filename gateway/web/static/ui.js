// Keyboard shortcuts and small conveniences for the admin UI. Loaded as a
// file (the content-security policy forbids inline script); everything it
// does can also be done with the mouse and plain forms.
(function () {
  "use strict";
  var page = document.body.getAttribute("data-page");

  function typing(ev) {
    var t = ev.target;
    return t && (t.tagName === "INPUT" || t.tagName === "TEXTAREA" || t.tagName === "SELECT" ||
                 t.isContentEditable);
  }
  function submit(id) {
    var form = document.getElementById(id);
    if (form) { form.requestSubmit ? form.requestSubmit(form.querySelector("button[type=submit]"))
                                   : form.submit(); }
  }

  var help = document.getElementById("help");
  var toggle = document.getElementById("help-toggle");
  if (toggle && help) {
    toggle.addEventListener("click", function () { help.hidden = !help.hidden; });
  }

  // queue: rows open their item; j/k move, Enter opens
  var rows = Array.prototype.slice.call(document.querySelectorAll("tr.row"));
  var current = -1;
  function select(i) {
    if (!rows.length) { return; }
    if (current >= 0) { rows[current].classList.remove("selected"); }
    current = Math.max(0, Math.min(rows.length - 1, i));
    rows[current].classList.add("selected");
    rows[current].scrollIntoView({block: "nearest"});
  }
  rows.forEach(function (row) {
    row.addEventListener("click", function (ev) {
      if (ev.target.tagName === "INPUT" || ev.target.tagName === "A") { return; }
      window.location.href = row.getAttribute("data-href");
    });
  });

  // item: clicking a highlighted span shows its finding, and the reverse
  function flash(el) {
    el.classList.add("flash");
    setTimeout(function () { el.classList.remove("flash"); }, 1200);
  }
  Array.prototype.forEach.call(document.querySelectorAll("mark.ev"), function (mark) {
    mark.addEventListener("click", function () {
      var first = (mark.getAttribute("data-findings") || "").split(" ")[0];
      var target = first && document.getElementById(first);
      if (target) { target.scrollIntoView({block: "center"}); flash(target); }
    });
  });
  Array.prototype.forEach.call(document.querySelectorAll(".finding"), function (box) {
    box.addEventListener("click", function (ev) {
      if (ev.target.closest("form, details")) { return; }
      var id = box.getAttribute("data-finding");
      var marks = document.querySelectorAll("mark.ev");
      Array.prototype.forEach.call(marks, function (m) {
        if ((" " + m.getAttribute("data-findings") + " ").indexOf(" " + id + " ") >= 0) {
          m.scrollIntoView({block: "center"}); flash(m);
        }
      });
    });
  });

  // Ctrl+Enter in the edit or reason box submits its form
  Array.prototype.forEach.call(document.querySelectorAll("#edit-form textarea, #reason"),
    function (box) {
      box.addEventListener("keydown", function (ev) {
        if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) {
          ev.preventDefault();
          submit(box.closest("form").id);
        }
      });
    });

  document.addEventListener("keydown", function (ev) {
    if (ev.ctrlKey || ev.metaKey || ev.altKey || typing(ev)) { return; }
    var key = ev.key;
    if (key === "?") { if (help) { help.hidden = !help.hidden; } return; }
    if (page === "queue") {
      if (key === "j") { select(current + 1); }
      else if (key === "k") { select(current - 1); }
      else if (key === "Enter" && current >= 0) {
        window.location.href = rows[current].getAttribute("data-href");
      }
      return;
    }
    if (page !== "item") { return; }
    if (key === "g") { window.location.href = "/review/"; }
    else if (key === "c") { submit("claim-form"); }
    else if (key === "a") { submit("approve-form"); }
    else if (key === "x") { submit("escalate-form"); }
    else if (key === "e") {
      var edit = document.querySelector("#edit-form textarea");
      if (edit) { ev.preventDefault(); edit.focus(); }
    } else if (key === "r") {
      var reason = document.getElementById("reason");
      if (reason) { ev.preventDefault(); reason.focus(); }
    }
  });
})();
