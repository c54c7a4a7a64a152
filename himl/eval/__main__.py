from himl.eval.main import run

run()
