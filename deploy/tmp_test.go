package deploy
import ("testing";"sigs.k8s.io/yaml";"fmt")
func TestTmpRender(t *testing.T){ objs,err:=RenderChart("helm/heapwatch","heapwatch","heapwatch-system",nil); if err!=nil{t.Fatal(err)}; for _,o:=range objs{b,_:=yaml.Marshal(o.Object);fmt.Println("---");fmt.Print(string(b))}}
