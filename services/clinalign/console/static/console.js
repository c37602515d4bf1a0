// Keyboard shortcuts on the labelling page (progressive enhancement: the form works
// without this script, by Tab, arrow keys and Enter). 1 / 2 / 3 choose left, right or
// about the same; S skips. Keys typed into a text field are left alone.
(function () {
  "use strict";
  document.addEventListener("keydown", function (event) {
    if (event.altKey || event.ctrlKey || event.metaKey) return;
    var target = event.target;
    var tag = target && target.tagName ? target.tagName.toLowerCase() : "";
    if (tag === "input" && target.type !== "radio" || tag === "textarea" || tag === "select") return;
    var form = document.getElementById("label-form");
    if (!form) return;
    var radio = form.querySelector('input[type="radio"][data-key="' + event.key + '"]');
    if (radio) {
      radio.checked = true;
      radio.focus();
      event.preventDefault();
      return;
    }
    if (event.key === "s" || event.key === "S") {
      var skip = document.getElementById("skip-task");
      if (skip) { skip.focus(); event.preventDefault(); }
    }
  });
  // A second click on a submit button while its form is on its way is ignored (the
  // server would answer it as a replay anyway).
  document.addEventListener("submit", function (event) {
    var form = event.target;
    if (form.dataset.sent === "1") { event.preventDefault(); return; }
    form.dataset.sent = "1";
  });
})();
