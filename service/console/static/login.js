// `dev` prints a login URL whose fragment (#token=...) carries the token: a fragment never leaves the
// browser, so the token is in no request line or server log. Fill the form from it, forget it, submit.
document.addEventListener("DOMContentLoaded", function () {
  var match = /(?:^|&)token=([^&]+)/.exec(window.location.hash.slice(1));
  if (!match) { return; }
  history.replaceState(null, "", window.location.pathname);
  var field = document.getElementById("token");
  if (field && !document.getElementById("login-error")) {
    field.value = decodeURIComponent(match[1]);
    document.getElementById("login-form").submit();
  }
});
